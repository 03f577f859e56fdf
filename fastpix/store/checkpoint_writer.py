"""The background checkpoint writer: one thread that serialises, hashes, writes, fsyncs and commits a snapshot
(store/snapshot.py) as one checkpoint set (checkpoint_set.write_set), while training goes on.

At most one save is in flight: `submit` refuses a second, so the caller waits for the first (`wait`), which also
frees the snapshot's buffers for the next one. The transaction is the synchronous one, so its guarantees hold: a kill
during a background write leaves the previous set (the next start's `recover` removes the temporaries). A save that
fails (a full disk) is not lost in the thread: its error is raised on the caller's thread by the next `check` or
`wait`, as if the save had been made there. A save told to stop (`abandon`: a second Ctrl-C) stops after the file
it is writing, removes its temporaries and is not committed, unless its commit had already begun: the latency of a
second Ctrl-C in a synchronous save, which is also cut only once its current write returns.

The thread is a daemon: a process that leaves without waiting for it (a third Ctrl-C) is not held up by a write,
which is then cut short as a kill would cut it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from fastpix.store.checkpoint_set import Abandoned
from fastpix.store.run_folder import RunFolder
from fastpix.store.snapshot import Snapshot

WAIT_SLICE_S = 0.25
# The writer's nice value. Its work (contiguous copies of channels-last weights, hashing, staging, the syscalls) is
# CPU time beside the training threads': at 10 they come first and the writer takes what they leave (measured at
# unet_256 batch 1 on 2 CPU cores with a save every 8 iterations: docs/benchmarks.md, "Checkpoint saves in the
# background"). On a GPU the training thread mostly waits for the device, and the writer runs freely.
WRITER_NICE = 10


def lower_priority():
    """Give the calling thread WRITER_NICE unless it is nicer already (Linux: each thread has its own nice value;
    elsewhere nothing)."""
    with contextlib.suppress(AttributeError, OSError):
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, max(os.getpriority(os.PRIO_PROCESS, thread), WRITER_NICE))


class CheckpointWriter:
    def __init__(self, run: RunFolder):
        self.run = run
        self.writing: int | None = None  # the iteration of the save in flight
        self._written: threading.Event | None = None  # set by the thread of the save in flight when it ends
        self._failure: BaseException | None = None
        self._abandon = threading.Event()

    def submit(self, taken: Snapshot):
        """Write `taken` in the background. The previous save must be written (wait) first."""
        if not self.wait(0):
            raise RuntimeError(f"the checkpoint of iteration {self.writing} is still being written")
        self.writing, self._written = taken.info["iteration"], threading.Event()
        threading.Thread(
            target=self._write,
            args=(taken, self._written),
            daemon=True,
            name=f"fastpix checkpoint writer (iteration {self.writing})",
        ).start()

    def _write(self, taken: Snapshot, written: threading.Event):
        lower_priority()
        try:
            self.run.write(taken.files(), taken.info, self._abandon.is_set)
        except Abandoned:
            pass
        except BaseException as exc:  # noqa: BLE001 - raised again on the training thread by check/wait
            self._failure = exc
        finally:
            written.set()

    def check(self):
        """Raise the error of a save that failed, if one has (without waiting)."""
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds (None: for as long as it takes) for the save in flight; True when none is
        left. A failed save's error is raised here. Interruptible: a signal handler that raises ends the wait."""
        if self._written is not None:
            if not self._wait_written(timeout):
                return False
            self._written = self.writing = None
        self.check()
        return True

    def _wait_written(self, timeout: float | None) -> bool:
        """Wait in short slices: a signal that the kernel handed to the writer thread is then handled by this (the
        main) thread within one slice, not once the write ends. (An Event, not Thread.join: a join cut short by a
        signal handler's exception marks a thread that is still running as stopped.)"""
        written = self._written
        assert written is not None, "called with a save in flight"
        deadline = None if timeout is None else time.monotonic() + timeout
        while not written.is_set():
            left = WAIT_SLICE_S if deadline is None else min(WAIT_SLICE_S, deadline - time.monotonic())
            if left <= 0:
                return False
            written.wait(left)
        return True

    def abandon(self):
        """Stop the save in flight before its commit, and wait until it has (it removes its temporaries): nothing
        of it is written after this returns, so the run folder's lock may be released."""
        self._abandon.set()
        if self._written is not None:
            self._wait_written(None)
            self._written = self.writing = self._failure = None
