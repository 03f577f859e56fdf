"""A folder on a small disk, for the disk-full tests: a real tmpfs where this process may mount one (root), else a
simulated one (shutil.disk_usage and the writes of the given modules see its capacity, ENOSPC beyond it)."""

from __future__ import annotations

import builtins
import collections
import contextlib
import errno
import os
import shutil
import subprocess


def _mount(folder: str, capacity: int) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={capacity}", "tmpfs", folder], capture_output=True)
    return done.returncode == 0


class _Simulated:
    def __init__(self, folder: str, capacity: int):
        self.folder, self.capacity, self.written = os.path.abspath(folder), capacity, 0

    def inside(self, path) -> bool:
        return os.path.abspath(os.fspath(path)).startswith(self.folder + os.sep)

    def disk_usage(self, real):
        def usage(path):
            if self.inside(os.path.join(os.fspath(path), "x")):
                free = max(0, self.capacity - self.written)
                return collections.namedtuple("usage", "total used free")(self.capacity, self.written, free)
            return real(path)

        return usage

    def open(self, path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 - the caller closes it: this is open()
        if "b" not in mode or not any(c in mode for c in "wax+") or not self.inside(path):
            return f
        return _Limited(f, self, os.fspath(path))


class _Limited:
    """A binary file whose writes count against the simulated disk."""

    def __init__(self, f, disk: _Simulated, path: str):
        self._f, self._disk, self._path = f, disk, path

    def write(self, data):
        if self._disk.written + len(data) > self._disk.capacity:
            raise OSError(errno.ENOSPC, "No space left on device", self._path)
        self._disk.written += len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@contextlib.contextmanager
def small_disk(folder: str, capacity: int, monkeypatch, modules=()):
    """folder (created) on a disk of `capacity` bytes while the block runs; the simulation patches `open` in each of
    `modules` (the modules whose writes must see it)."""
    os.makedirs(folder, exist_ok=True)
    if _mount(folder, capacity):
        try:
            yield "tmpfs"
        finally:
            subprocess.run(["umount", "-l", folder], check=False)
        return
    sim = _Simulated(folder, capacity)
    monkeypatch.setattr(shutil, "disk_usage", sim.disk_usage(shutil.disk_usage))
    for module in modules:
        monkeypatch.setattr(module, "open", sim.open, raising=False)
    yield "simulated"
