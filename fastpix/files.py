"""Writing files so that a kill or a full disk never leaves a half-written one: the one atomic-write helper.

Every file fastpix writes for later reading (checkpoints, configs, plots, caches, compiled packages, results) goes
through `atomic_write` (a temporary in the same folder, fsynced, then renamed over the target: a reader sees the old
file or the new one) or, for the members of a checkpoint set, `write_new` (a new file, fsynced; the set's manifest
makes it visible). A full disk becomes `DiskFull`, one line naming the file and the bytes it needed.

Imports only the standard library and fastpix.errors, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable
from typing import Any, BinaryIO

from fastpix.errors import DiskFull

TMP_PREFIX = ".tmp-"  # temporaries start with this; a folder's owner may remove them after a crash


def disk_full(path: str, needed: int, note: str = "") -> DiskFull:
    """The one-line error for a write of `needed` bytes to `path` that found no room."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = f"{shutil.disk_usage(folder).free:,}"
    except OSError:
        free = "an unknown number of"
    return DiskFull(f"{path}: no space left on the device (the write needs {needed:,} bytes, {free} are free){note}")


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _create(path: str):
    """A new file with the user's umask (mkstemp would make it 0600)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _write_into(path: str, data: bytes | Callable[[BinaryIO], Any]):
    with open(path, "r+b") as f:
        if callable(data):
            data(f)
        else:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_new(path: str, data: bytes | Callable[[BinaryIO], Any], needed: int | None = None, note: str = ""):
    """data to a new file at path (which must not exist), fsynced. data: the bytes, or a function that writes them
    into the open file (a large file streamed from memory it already has, never whole in memory twice). A full disk
    removes the partial file and raises DiskFull naming the path and the bytes needed (those of data, or `needed`,
    with `note` appended)."""
    try:
        _create(path)
        _write_into(path, data)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(path)
        if is_disk_full(exc):
            raise disk_full(path, needed or (len(data) if isinstance(data, bytes) else 0), note) from exc
        raise


def temporary_path(path: str) -> str:
    """A fresh temporary name beside `path` (same folder, so the final rename is atomic), unique to this call and
    naming the writing process: .tmp-<pid>-<random>-<name>."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{name}")


def temporary_writer(name: str) -> int | None:
    """The pid of the process that made temporary `name` (a file name from temporary_path); None for other names."""
    pid = name[len(TMP_PREFIX) :].split("-", 1)[0] if name.startswith(TMP_PREFIX) else ""
    return int(pid) if pid.isdigit() else None


def atomic_write(path: str, write: Callable[[str], Any], nbytes: int | None = None):
    """Call write(tmp) to fill a temporary file beside path, fsync it, then rename it over path: readers see the
    old file or the new one, never part of one. nbytes: the size being written, for the message of a full disk
    (else what was written when it filled). The folder is created if missing."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temporary_path(path)
    try:
        _create(tmp)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path, nbytes or (os.path.getsize(tmp) if os.path.exists(tmp) else 0)) from exc
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path: str, data: bytes):
    atomic_write(path, lambda tmp: _write_into(tmp, data), len(data))


def atomic_write_json(path: str, obj, indent: int | None = 2):
    text = (json.dumps(obj, indent=indent, sort_keys=True) + "\n").encode()
    atomic_write_bytes(path, text)


def fsync_folder(folder: str):
    """Make the renames in `folder` durable (not possible on every file system: then nothing is done)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
