"""The `fastpix` command: parse the flags, build the configuration, call one function of the layer below, print.

One module per group of subcommands, each with a `register(sub)` adding its subcommands to the parser; a new
subcommand is a new module and one entry in COMMANDS. Flags come from the dataclasses in fastpix/config/
(cli/flags.py). Options left unset keep their defaults, or, for `test`, `eval` and `train --continue_train`, the
values saved with the run (cli/run_setup.py).

Errors: a `fastpix.errors.UserError` (or a system error naming a file) is printed as one line,
`fastpix <command>: error: <message>`, and the command exits with its status; anything else is a bug in fastpix
and shows its traceback, as does every error with --debug.
"""

from __future__ import annotations

import os
import sys

from fastpix import __version__
from fastpix.cli import cache, data, inference, info, models, study, training
from fastpix.cli.console import show_messages
from fastpix.cli.flags import DEBUG_HELP, CommandParser

COMMANDS = (training, inference, data, models, cache, info, study)


def build_parser() -> CommandParser:
    parser = CommandParser(prog="fastpix", description="pix2pix, fast: train, test and export.", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"fastpix {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def user_error(exc: BaseException) -> tuple[str, int] | None:
    """(one line, exit status) for an error the user can fix; None for a programming error (its traceback shows)."""
    from fastpix.errors import UserError

    if isinstance(exc, KeyboardInterrupt):
        return str(exc) or "interrupted", getattr(exc, "exit_status", 130)  # train.stop.Stopped: 128 + signal
    if isinstance(exc, UserError):
        return f"error: {exc}", exc.exit_status
    if isinstance(exc, OSError):  # permission denied, no space left, a missing file: with the path
        paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
        return f"error: {exc.strerror or exc}{': ' + paths if paths else ''}", 1
    if isinstance(exc, ModuleNotFoundError) and exc.name and not exc.name.startswith("fastpix"):
        return f"error: this needs the optional package {exc.name.split('.')[0]} (pip install it)", 1
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return f"error: out of device memory (try a smaller --batch_size or --crop_size): {exc}".split("\n")[0], 1
    if isinstance(exc, MemoryError):
        return f"error: {str(exc) or 'out of memory'}", 1
    return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    debug = args.debug or os.environ.get("FASTPIX_DEBUG", "0") not in ("", "0")
    show_messages(args.command)
    try:
        status = args.func(args)
    except (Exception, KeyboardInterrupt) as exc:
        known = None if debug else user_error(exc)
        if known is None:
            raise
        print(f"fastpix {args.command}: {known[0]}", file=sys.stderr)
        return known[1]
    return status or 0
