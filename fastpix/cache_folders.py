"""Cache folders bounded in size: entries leased while in use, the least recently used removed first.

Both of fastpix's disk caches (the compiled packages, infer/compiled_cache.py; the decoded pairs, data/cache.py)
keep entries that are expensive to rebuild and cheap to lose, and both are shared by every process of the user.
So each is bounded the same way:

- An entry in use is *leased*: its process holds a shared flock(2) on one of its files (the entry's lock file) for
  as long as it uses it. flock, rather than a lease file naming a pid, because the kernel drops the lock when the
  process dies however it dies: a killed server never leaves an entry pinned.
- Eviction takes the entries from the least recently used (the lock file's mtime, touched by every use) to the most,
  and removes each one it can lock exclusively without waiting, until the folder fits its bound. An entry leased
  by any process (this one included: flock locks belong to open files, not processes) is skipped.
- A lease is taken on the file, then checked against the path: an entry removed between the open and the lock is
  seen as gone, never used.

Imports only the standard library, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from dataclasses import dataclass, field

GB = 10**9  # the flags say GB: decimal, as disks are sold and `df -H` shows


class Lease:
    """A shared flock on `path`, held until release(): the entry it locks is in use. Raises FileNotFoundError when
    the file is gone, or was replaced or removed while the lock was being taken."""

    fd = None

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_SH)
            if os.fstat(self.fd).st_ino != os.stat(path).st_ino:
                raise FileNotFoundError(f"{path} was replaced while it was being opened")
        except BaseException:
            self.release()
            raise
        touch(path)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self):
        self.release()


def touch(path: str):
    """Mark the entry whose lock file is `path` as just used."""
    with contextlib.suppress(OSError):
        os.utime(path)


def leased(path: str) -> bool:
    """Whether any process holds a lease on `path` (False when the file is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def size_of(path: str) -> int:
    """Bytes of a file, or of everything under a folder (0 when it is gone)."""
    if os.path.isdir(path) and not os.path.islink(path):
        total = 0
        for folder, _, names in os.walk(path):
            for name in names:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(folder, name)).st_size
        return total
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


@dataclass
class Entry:
    """One evictable thing in a cache: its lock file (whose mtime is its last use) and every path it owns."""

    lock: str
    paths: list[str] = field(default_factory=list)  # removed with it (the lock file last)
    what: str = ""  # what it is, in words, for `fastpix cache list`

    @property
    def nbytes(self) -> int:
        return sum(size_of(p) for p in {self.lock, *self.paths})

    @property
    def last_used(self) -> float:
        try:
            return os.stat(self.lock).st_mtime
        except OSError:
            return 0.0

    @property
    def in_use(self) -> bool:
        return leased(self.lock)


def remove_unless_leased(entry: Entry) -> bool:
    """Remove entry's files unless a process leases it; True when removed (or already gone)."""
    try:
        fd = os.open(entry.lock, os.O_RDONLY)
    except FileNotFoundError:
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
        for path in [p for p in entry.paths if p != entry.lock] + [entry.lock]:
            remove_path(path)
        return True
    finally:
        if fd is not None:
            os.close(fd)


def remove_path(path: str):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def evict(entries: list[Entry], max_bytes: float) -> list[Entry]:
    """Remove the least recently used of `entries` that no process leases until the rest hold at most max_bytes.
    Returns the entries removed."""
    sized = [(entry, entry.nbytes) for entry in entries]
    total = sum(n for _, n in sized)
    removed = []
    for entry, nbytes in sorted(sized, key=lambda pair: pair[0].last_used):
        if total <= max_bytes:
            break
        if remove_unless_leased(entry):
            total -= nbytes
            removed.append(entry)
    return removed
