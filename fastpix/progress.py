"""Progress of a long job that is not training (a download, an extraction, a folder of images): a bar on a terminal,
a line every few seconds elsewhere. And `announced`: a log line for a wait only when it turns out to be long.

tqdm's bar redraws itself with carriage returns: written to a file or a CI log it becomes one endless line. So the bar
is drawn only when the stream is a terminal; otherwise one plain line every `LINE_EVERY_S` seconds and one at the
end say how far the job got. Imports only the standard library and tqdm, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

LINE_EVERY_S = 5.0
SLOW_S = 2.0  # a wait longer than this is said; a shorter one would only be noise


def _amount(n: float, unit: str) -> str:
    if unit != "B":
        return f"{n:,.0f} {unit}"
    for scale, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.1f} {name}"
    return f"{n:.0f} B"


class Progress:
    """`with Progress(label, total, unit) as p: p.update(n)`. unit "B" counts bytes (shown in KiB/MiB/GiB); total
    None when unknown. enabled False shows nothing."""

    def __init__(self, label: str, total: float | None, unit: str = "images", enabled: bool = True, stream=None):
        self.label, self.total, self.unit = label, total, unit
        self.done: float = 0
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                desc=label,
                unit=unit,
                unit_scale=unit == "B",
                unit_divisor=1024,
                file=self.stream,
                leave=True,
            )
        self.started = self.last_line = time.monotonic()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def reset(self, done: float = 0):
        """Start counting again from `done` (a download that restarts from zero)."""
        self.done = done
        if self.bar is not None:
            self.bar.reset(total=self.total)
            self.bar.update(done)

    def update(self, n: float = 1):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self.last_line >= LINE_EVERY_S:
            self._line()

    def _line(self):
        self.last_line = time.monotonic()
        of = ""
        if self.total:
            of = f" of {_amount(self.total, self.unit)} ({100 * self.done / self.total:.0f}%)"
        print(
            f"{self.label}: {_amount(self.done, self.unit)}{of}, {self.last_line - self.started:.0f} s",
            file=self.stream,
            flush=True,
        )

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.done and self.last_line != self.started:
            self._line()  # the final count, when lines were printed along the way
        self.enabled = False


@contextlib.contextmanager
def announced(log, what: str, after_s: float = SLOW_S):
    """Around a wait: log `what` (INFO) once it has lasted after_s seconds, then "<what>: done in N s" when it ends;
    nothing for a wait shorter than that."""
    started = time.monotonic()
    timer = threading.Timer(after_s, log.info, ("%s", what))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if time.monotonic() - started >= after_s:
            log.info("%s: done in %.1f s", what, time.monotonic() - started)
