"""The decode caches on disk as a whole: one entry per cached data set build, what each is, and their bound.

An entry is a build of cache.py: <stem>.a and <stem>.b (the arrays) and <stem>.json (the manifest, its lock file:
a run using the build holds a shared lock on it, fastpix.cache_folders). Entries live in a folder per data set
under the default root, <user cache>/pairs, or directly in a --cache_dir. After each build the least recently used
entries are removed until the root holds at most --cache_max_gb, never one a run is using.
"""

from __future__ import annotations

import contextlib
import json
import os

from fastpix.cache_folders import Entry, evict, remove_unless_leased
from fastpix.config import user_cache_dir


def pairs_root(cache_dir: str | None = None) -> str:
    """The folder whose entries share one bound: cache_dir when given, else the default root of every data set's
    folder."""
    return cache_dir or os.path.join(user_cache_dir(), "pairs")


def read_manifest(path: str) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def entry_of(manifest_path: str) -> Entry:
    stem = manifest_path[: -len(".json")]
    return Entry(manifest_path, [stem + ".a", stem + ".b", manifest_path], describe(read_manifest(manifest_path)))


def describe(manifest: dict) -> str:
    """A build's data set and options in words, for `fastpix cache list`."""
    options = manifest.get("options", {})
    where = options.get("dataroot") or manifest.get("source", "?")
    shape = manifest.get("shape_a") or [0]
    words = [f"{where}", f"{shape[0]} pairs"]
    if options:
        words += [
            f"load_size {options.get('load_size')}",
            options.get("direction", "?"),
            f"channels {'/'.join(map(str, options.get('channels', [])))}",
        ]
    return ", ".join(words)


def entries(cache_dir: str | None = None) -> list[Entry]:
    """Every build under the root: in it directly (a --cache_dir) or one folder down (the default layout)."""
    root = pairs_root(cache_dir)
    found = []
    for folder in [root] + sorted(os.path.join(root, n) for n in (os.listdir(root) if os.path.isdir(root) else [])):
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.startswith("pairs-") and name.endswith(".json"):
                found.append(entry_of(os.path.join(folder, name)))
    return found


def prune(max_bytes: float, cache_dir: str | None = None) -> list[Entry]:
    """Bound the root to max_bytes, the least recently used builds first, never one in use."""
    removed = evict(entries(cache_dir), max_bytes)
    remove_empty_folders(pairs_root(cache_dir))
    return removed


def clear(cache_dir: str | None = None) -> tuple[list[Entry], list[Entry]]:
    """Remove every build no run is using: (removed, kept because in use)."""
    removed: list[Entry] = []
    kept: list[Entry] = []
    for entry in entries(cache_dir):
        (removed if remove_unless_leased(entry) else kept).append(entry)
    remove_empty_folders(pairs_root(cache_dir))
    return removed, kept


def remove_empty_folders(root: str):
    for name in os.listdir(root) if os.path.isdir(root) else []:
        folder = os.path.join(root, name)
        if os.path.isdir(folder) and not os.listdir(folder):
            with contextlib.suppress(OSError):  # filled meanwhile by a run starting a build
                os.rmdir(folder)
