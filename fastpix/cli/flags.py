"""Flags from the config dataclasses (fastpix/config/: one place for every default), and the parser they make.

Each option is offered with dashes (--batch-size) and with the reference's spelling (--batch_size), so a
reference user's command line runs unchanged. No abbreviation is taken, so a misspelt or reference-only flag never
lands on another one; an unknown flag is refused with its subcommand's own usage and the nearest flag it has.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib

from fastpix.config import MINIMUM

TYPES = {"int": int, "float": float, "str": str, "bool": bool, "tuple": str}
FORMATTER = argparse.RawDescriptionHelpFormatter
DEBUG_HELP = "on an error, show its traceback (default: one line naming the problem; FASTPIX_DEBUG=1 does the same)"
NEAR = 0.75  # difflib's similarity for "did you mean": --netg, --batchsize yes; --bogus for --verbose no
QUIET_HELP = (
    "no progress bar, a line every --print_freq iterations instead (default: the bar on a terminal, the "
    "lines elsewhere)"
)
QUIET_ACCEPTED = (
    "accepted, as train and predict take it, so that one set of flags serves them all; this command "
    "shows no progress bar"
)


def at_least(kind, name: str):
    """kind, refusing values below MINIMUM[name] with the flag's own error line."""

    def parse(text):
        value = kind(text)
        if value < MINIMUM[name]:
            raise argparse.ArgumentTypeError(f"{text} is below the smallest value it takes, {MINIMUM[name]}")
        return value

    parse.__name__ = kind.__name__  # argparse names it in "invalid int value"
    return parse


def help_of(f) -> str:
    text = f.metadata["help"]
    if f.metadata.get("required"):
        return f"{text} (required)"
    if "(default:" in text:
        return text
    default = " ".join(f.default) if isinstance(f.default, tuple) else (f.default if f.default != "" else "''")
    return f"{text} (default: {default})"


def add_config_args(parser: argparse.ArgumentParser, cls, title: str):
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.metadata.get("positional"):
            group.add_argument(
                f.name, choices=f.metadata.get("choices"), metavar=f.name.upper(), help=f.metadata["help"]
            )
            continue
        flags = [f"--{f.name}"]
        if "_" in f.name:
            flags.insert(0, f"--{f.name.replace('_', '-')}")
        flags += list(f.metadata.get("aliases", ()))
        kind = TYPES[str(f.type).split(" ")[0]]
        if kind is bool and f.default is None:  # a tri-state: unset means "decide from the device"
            group.add_argument(
                *flags, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_of(f)
            )
        elif kind is bool:
            group.add_argument(*flags, dest=f.name, action="store_true", default=argparse.SUPPRESS, help=help_of(f))
        else:
            choices = f.metadata.get("choices")
            group.add_argument(
                *flags,
                dest=f.name,
                type=at_least(kind, f.name) if f.name in MINIMUM else kind,
                default=argparse.SUPPRESS,
                choices=choices,
                nargs=f.metadata.get("nargs"),
                required=f.metadata.get("required", False),
                help=help_of(f),
                metavar=None if choices else f.name.upper(),
            )


def build_config(cls, *layers: dict):
    """cls's defaults, overridden by each layer of values in turn (e.g. a saved config, then the flags given)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for layer in layers:
        values.update({k: v for k, v in layer.items() if k in names})
    return cls(**values)


def unrecognized(extras: list[str], parser: argparse.ArgumentParser) -> str:
    """argparse's message for arguments `parser` does not take, with the nearest of its flags for each unknown
    flag that is near one (a case or a letter away: --netg, --batchsize, --n_epoch)."""
    offered = {s.lower(): s for action in parser._actions for s in action.option_strings if s.startswith("--")}
    flags, hints = [arg.split("=", 1)[0] for arg in extras if arg.startswith("--")], []
    for flag in flags:
        near = difflib.get_close_matches(flag.lower(), offered, n=1, cutoff=NEAR)
        if near:
            hints.append(offered[near[0]] if len(flags) == 1 else f"{offered[near[0]]} for {flag}")
    return f"unrecognized arguments: {' '.join(extras)}" + (f" (did you mean {', '.join(hints)}?)" if hints else "")


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose unknown flags are refused by the subcommand that was given them: its usage, and the
    nearest of its own flags (argparse alone answers with the top-level usage)."""

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            leaf = getattr(parsed, "command_parser", self)
            leaf.error(unrecognized(extras, leaf))
        return parsed


def subcommand(sub, name: str, func, help: str, *configs, quiet: str | None = None) -> argparse.ArgumentParser:
    """A subcommand running func (its docstring is the description), with the flags of each (dataclass, group
    title) in configs, --debug, and --quiet with the help text `quiet` where the command runs a network."""
    p = sub.add_parser(name, help=help, description=func.__doc__, formatter_class=FORMATTER, allow_abbrev=False)
    for cls, title in configs:
        add_config_args(p, cls, title)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    if quiet is not None:
        p.add_argument("--quiet", action="store_true", help=quiet)
        p.set_defaults(quiet=False)
    p.set_defaults(func=func, command_parser=p)
    return p
