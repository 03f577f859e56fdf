"""The compiled runtime's folder on disk: packages, what each key is, failed builds, and the bound on its size.

    <root>/<key>/entry.json                  what the key stands for: network, norm mode, precision, weights, source
    <root>/<key>/<n>x<h>x<w>.pt2             a package for inputs of that batch piece and padded size
    <root>/<key>/<n>x<h>x<w>.failed.json     a build that failed, not tried again by this torch and fastpix
    <root>/<key>.onnx                        the ONNX Runtime path's file (onnx_runtime.py)
    <root>/.build-<pid>-<random>/            Inductor's build files while a build runs (removed when it ends)

The key (compiled.cache_key) hashes the weights, the norm mode, the precision, torch's version, the CPU's
features and the compiled network's form (compiled.NETWORK_FORM). The root is bounded (--compile_cache_max_gb):
after each build the least recently used packages and ONNX files are removed until it fits, never one a process has
loaded (each loaded package holds a shared flock on its file: fastpix.cache_folders). Inductor's build files are
never kept: only the .pt2 is needed to run.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets

from fastpix import __version__ as FASTPIX_VERSION
from fastpix.cache_folders import Entry, evict, remove_path, remove_unless_leased, size_of
from fastpix.config import default_compile_cache_dir
from fastpix.files import TMP_PREFIX, atomic_write_json, temporary_writer

BUILD_PREFIX = ".build-"
ENTRY_FILE = "entry.json"
FAILED_SUFFIX = ".failed.json"


def cache_root(cache_dir: str | None = None) -> str:
    return cache_dir or default_compile_cache_dir()


def package_folder(key: str, cache_dir: str | None = None) -> str:
    return os.path.join(cache_root(cache_dir), key)


def shape_name(shape) -> str:
    """<n>x<h>x<w> of an (n, c, h, w) shape."""
    return "x".join(str(d) for d in (shape[0], *shape[2:]))


def package_path(folder: str, shape) -> str:
    return os.path.join(folder, shape_name(shape) + ".pt2")


def cached_shapes(folder: str) -> list[tuple[int, ...]]:
    """(n, h, w) of every package in folder (named <n>x<h>x<w>.pt2), the most recently used first."""
    found = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        stem, suffix = os.path.splitext(name)
        parts = stem.split("x")
        if suffix == ".pt2" and len(parts) == 3 and all(p.isdigit() for p in parts):
            with contextlib.suppress(OSError):
                found.append((os.stat(os.path.join(folder, name)).st_mtime, tuple(int(p) for p in parts)))
    return [shape for _, shape in sorted(found, reverse=True)]


def has_packages(key: str, cache_dir: str | None = None) -> bool:
    return bool(cached_shapes(package_folder(key, cache_dir)))


def describe(folder: str, what: dict):
    """Record what folder's key stands for (once: the key fixes it), for `fastpix cache list`."""
    if not os.path.exists(os.path.join(folder, ENTRY_FILE)):
        atomic_write_json(os.path.join(folder, ENTRY_FILE), what)


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------------------------ failed builds


def failure_path(folder: str, shape) -> str:
    return os.path.join(folder, shape_name(shape) + FAILED_SUFFIX)


def remember_failure(folder: str, shape, reason: str):
    """A build that failed is not tried again by later runs of the same torch and fastpix (it would fail again,
    seconds each time); `fastpix cache clear --compiled` forgets it."""
    import torch

    with contextlib.suppress(OSError):  # a full disk may refuse even this: the build is then tried again next run
        atomic_write_json(
            failure_path(folder, shape), {"error": reason, "torch": torch.__version__, "fastpix": FASTPIX_VERSION}
        )


def remembered_failure(folder: str, shape) -> str | None:
    """Why building this shape failed before, or None: never tried, or tried by another torch or fastpix version
    (whose failure is forgotten, so that the new one tries again)."""
    import torch

    path = failure_path(folder, shape)
    record = read_json(path)
    if not record:
        return None
    if record.get("torch") != torch.__version__ or record.get("fastpix") != FASTPIX_VERSION:
        remove_path(path)
        return None
    return str(record.get("error", "unknown error"))


# ------------------------------------------------------------------------------------------------ build folders


@contextlib.contextmanager
def build_folder(parent: str):
    """A fresh folder under parent for Inductor's build files, named after this process and removed when the build
    ends; one left by a killed process is removed by prune()."""
    path = os.path.join(parent, f"{BUILD_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
    os.makedirs(path)
    try:
        yield path
    finally:
        remove_path(path)


def _writer_pid(name: str) -> int | None:
    if name.startswith(BUILD_PREFIX):
        pid = name[len(BUILD_PREFIX) :].split("-", 1)[0]
        return int(pid) if pid.isdigit() else None
    return temporary_writer(name) if name.startswith(TMP_PREFIX) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(folder: str):
    """Build folders and partial packages of processes that died (killed, so their cleanup never ran)."""
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        pid = _writer_pid(name)
        if pid is not None and not _alive(pid):
            remove_path(os.path.join(folder, name))


# ------------------------------------------------------------------------------------------------ the bound


def entries(cache_dir: str | None = None) -> list[Entry]:
    """Every package and ONNX file under the root, each an evictable Entry described in words."""
    root = cache_root(cache_dir)
    found = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        path = os.path.join(root, name)
        if name.endswith(".onnx") and os.path.isfile(path):
            found.append(Entry(path, [path], f"ONNX, {name[:-5][:12]}…"))
        elif os.path.isdir(path) and not name.startswith("."):
            what = describe_key(read_json(os.path.join(path, ENTRY_FILE)), name)
            for n, h, w in sorted(cached_shapes(path)):
                package = package_path(path, (n, 0, h, w))
                found.append(Entry(package, [package], f"{what}, {h}x{w}, batch piece {n}"))
    return found


def describe_key(record: dict, key: str) -> str:
    if not record:
        return f"key {key[:12]}… (no description: built by an older fastpix)"
    parts = [
        record.get("source") or f"key {key[:12]}…",
        record.get("network", "?"),
        f"norm_mode {record.get('norm_mode', '?')}",
        record.get("precision", "?"),
    ]
    return ", ".join(parts)


def prune(max_bytes: float, cache_dir: str | None = None) -> list[Entry]:
    """Bound the root to max_bytes: orphans first, then the least recently used packages no process has loaded.
    Returns the entries removed."""
    root = cache_root(cache_dir)
    remove_orphans(root)
    for name in os.listdir(root) if os.path.isdir(root) else []:
        remove_orphans(os.path.join(root, name))
    removed = evict(entries(root), max_bytes)
    remove_empty_keys(root)
    return removed


def remove_empty_keys(root: str):
    """Key folders left with neither a package nor a failure to remember."""
    for name in os.listdir(root) if os.path.isdir(root) else []:
        folder = os.path.join(root, name)
        if not os.path.isdir(folder) or name.startswith("."):
            continue
        kept = [n for n in os.listdir(folder) if n.endswith((".pt2", FAILED_SUFFIX)) or n.startswith(TMP_PREFIX)]
        if not kept and not any(_writer_pid(n) is not None for n in os.listdir(folder)):
            remove_path(folder)


def failures(cache_dir: str | None = None) -> list[tuple[str, str]]:
    """(path, reason) of every remembered failed build."""
    root = cache_root(cache_dir)
    found = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        folder = os.path.join(root, name)
        for marker in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if marker.endswith(FAILED_SUFFIX):
                found.append(
                    (os.path.join(folder, marker), str(read_json(os.path.join(folder, marker)).get("error", "?")))
                )
    return found


def clear(cache_dir: str | None = None) -> tuple[list[Entry], list[Entry]]:
    """Remove every package and ONNX file no process has loaded, and every remembered failure. Returns (removed,
    kept because in use)."""
    root = cache_root(cache_dir)
    removed: list[Entry] = []
    kept: list[Entry] = []
    for entry in entries(root):
        (removed if remove_unless_leased(entry) else kept).append(entry)
    for path, _ in failures(root):
        remove_path(path)
    remove_orphans(root)
    remove_empty_keys(root)
    return removed, kept


def total_bytes(cache_dir: str | None = None) -> int:
    return size_of(cache_root(cache_dir))
