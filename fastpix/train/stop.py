"""Stopping a run cleanly: SIGINT (Ctrl-C) or SIGTERM asks the loop to stop after the iteration in progress, with a
checkpoint; a second Ctrl-C stops at once (a save it cuts short is not committed: the previous one stands)."""
from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    def __init__(self):
        self.signal_name = None
        self._previous = {}

    def __bool__(self):
        return self.signal_name is not None

    def _handle(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt("interrupted twice: stopped at once; the last complete checkpoint is kept")
        self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False
