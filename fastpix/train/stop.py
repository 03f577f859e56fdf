"""Stopping a run cleanly: SIGINT (Ctrl-C) or SIGTERM asks the loop to stop after the iteration in progress, with a
checkpoint; a second Ctrl-C stops at once (a save it cuts short is not committed: the previous one stands). The run
then ends with Stopped, whose exit status is the shell's for that signal."""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """A run stopped by a signal, after its checkpoint. exit_status is 128 + the signal's number (SIGINT 130, SIGTERM
    143), as a shell reports a process the signal ended: what supervisors and job schedulers expect."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_status = 128 + signum


class StopRequest:
    def __init__(self):
        self.signal_name = self.signum = None
        self._previous = {}

    def __bool__(self):
        return self.signal_name is not None

    def _handle(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt("interrupted twice: stopped at once; the last complete checkpoint is kept")
        self.signal_name, self.signum = signal.Signals(signum).name, signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False
