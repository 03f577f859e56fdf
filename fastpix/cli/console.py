"""What the CLI prints besides results and errors: notes on what fastpix decided for the user, one line each
(`fastpix <command>: ...`), said once by a multi-process run."""
from __future__ import annotations

import os


def is_main_process() -> bool:
    """False on the ranks > 0 of a torchrun launch: what all ranks would say, rank 0 says once."""
    return os.environ.get("RANK", "0") == "0"


def note(args, text: str):
    if is_main_process():
        print(f"fastpix {args.command}: {text}", flush=True)
