"""What the CLI prints besides results and errors: notes on what fastpix decided for the user, one line each
(`fastpix <command>: ...`), said once by a multi-process run; and the library's log messages (the "fastpix.*"
loggers: compiling in the background, building a cache, warming up) in the same shape on stderr."""

from __future__ import annotations

import logging
import os
import sys


def is_main_process() -> bool:
    """False on the ranks > 0 of a torchrun launch: what all ranks would say, rank 0 says once."""
    return os.environ.get("RANK", "0") == "0"


class MessageLines(logging.Handler):
    """`fastpix <command>: <message>` on the stderr of the moment (tests swap it) for each record of INFO and up."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.command = "?"

    def emit(self, record: logging.LogRecord):
        try:
            # One write with its newline: print() writes the text and the newline apart, and uvicorn's threads
            # writing between the two joined their line onto ours.
            sys.stderr.write(f"fastpix {self.command}: {record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging's contract: a message that cannot be shown is reported, not raised
            self.handleError(record)


MESSAGES = MessageLines()


def show_messages(command: str):
    """Show fastpix's INFO messages as lines of `command` (once per process; main() calls it for every command)."""
    MESSAGES.command = command
    logger = logging.getLogger("fastpix")
    if MESSAGES not in logger.handlers and is_main_process():
        logger.addHandler(MESSAGES)
        logger.setLevel(logging.INFO)


def note(args, text: str):
    if is_main_process():
        print(f"fastpix {args.command}: {text}", flush=True)
