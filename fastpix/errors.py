"""The errors a user can cause, as one hierarchy.

Everything below the CLI raises a `UserError` subclass for a mistake the user can fix (a flag, a file, a data set,
the disk), with a message that names the flag or file and what would be right. The CLI prints such an error as one
line, `fastpix <command>: error: <message>`, and exits with the error's `exit_status`. Any other exception is a bug
in fastpix: it shows its traceback (always with `--debug`).

Imports nothing, so every layer (kernels apart, which import nothing of fastpix) may raise these.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message says what and how."""

    exit_status = 2


class ConfigError(UserError):
    """A flag or argument value that cannot work (names the flag and the values it takes)."""


class DataError(UserError):
    """A data set, split or image that cannot be read as asked (names the file or folder)."""


class DecodeError(DataError):
    """One image file that cannot be decoded (names the file)."""


class ImageTooLarge(DecodeError):
    """An image whose header declares more pixels than allowed: refused before any pixel is decoded."""


class UnsafeArchive(DataError):
    """An archive with a member that would land outside its folder, or is a link, a device or a FIFO: refused whole,
    nothing extracted (names the archive and the member)."""


class CheckpointError(UserError):
    """A run folder, weights file or train state that is missing, damaged or does not fit (names the file)."""


class ResourceError(UserError):
    """The machine ran out of something: disk space, memory."""

    exit_status = 1


class DiskFull(ResourceError):
    """No space left where a file was being written (names the file and the bytes needed)."""


class NetworkError(UserError):
    """A download that failed after its retries: the URL did not answer, answered an error, or broke off (names the
    URL, and where to put the file when it is fetched by hand)."""

    exit_status = 1


class MissingDependency(UserError):
    """An optional package that this command needs is not installed (names the pip command that installs it)."""

    exit_status = 1

    def __init__(self, package: str, extra: str | None = None, what: str = "this"):
        hint = f"pip install 'fastpix[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{what} needs the optional package {package}: {hint}")
        self.package = package
