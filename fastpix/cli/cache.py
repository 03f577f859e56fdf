"""`fastpix cache`: what fastpix keeps on disk to avoid work (compiled generators, decoded data sets), and clearing it.

Both caches are bounded by themselves (--compile_cache_max_gb, --cache_max_gb: the least recently used entries go
first, never one in use); this shows what they hold and removes it by hand. An entry a running process uses (a
loaded package, a data set a run trains on) is never removed: `clear` names it and exits with status 1.
"""

from __future__ import annotations

import time

from fastpix.cli.flags import build_config, subcommand
from fastpix.config import COMPILE_CACHE_MAX_GB, PAIRS_CACHE_MAX_GB, CacheConfig


def _size(nbytes: float) -> str:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes:.0f} B"


def _age(seconds: float) -> str:
    for scale, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= scale:
            return f"{seconds / scale:.0f} {unit} ago"
    return "just now"


def _caches(cfg: CacheConfig):
    """(title, folder, bound in GB, entries, remembered failures) of the caches the flags select."""
    from fastpix.data import cache_entries
    from fastpix.infer import compiled_cache

    both = not (cfg.compiled or cfg.pairs)
    if cfg.compiled or both:
        folder = cfg.compile_cache_dir
        yield (
            "compiled generators",
            compiled_cache.cache_root(folder),
            f"--compile_cache_max_gb, default {COMPILE_CACHE_MAX_GB:g}",
            compiled_cache.entries(folder),
            compiled_cache.failures(folder),
        )
    if cfg.pairs or both:
        yield (
            "decode caches",
            cache_entries.pairs_root(cfg.cache_dir),
            f"--cache_max_gb, default {PAIRS_CACHE_MAX_GB:g}",
            cache_entries.entries(cfg.cache_dir),
            [],
        )


def cmd_cache_list(args):
    """Each cache's folder and size, and every entry in it: its size, when it was last used, whether a running
    process uses it, and what it is (compiled: the checkpoint or key, network, norm mode, precision, padded size and
    batch piece; decode caches: the data set and its options). Also the compiled builds that failed, which are not
    tried again until `fastpix cache clear --compiled` (or a new torch or fastpix)."""
    cfg = build_config(CacheConfig, vars(args))
    now = time.time()
    for title, folder, bound, entries, failures in _caches(cfg):
        total = sum(entry.nbytes for entry in entries)
        print(f"{title}: {folder}: {len(entries)} entries, {_size(total)} (bound: {bound} GB)")
        for entry in sorted(entries, key=lambda e: e.last_used, reverse=True):
            in_use = ", in use" if entry.in_use else ""
            print(f"  {_size(entry.nbytes):>9}  used {_age(now - entry.last_used)}{in_use}  {entry.what}")
        for path, reason in failures:
            print(f"  failed build {path}: {reason}")
    return 0


def cmd_cache_clear(args):
    """Remove every entry of the caches (both unless --compiled or --pairs names one) that no running process uses,
    and the compiled builds remembered as failed. Entries in use are kept and named; the exit status is then 1."""
    from fastpix.data import cache_entries
    from fastpix.infer import compiled_cache

    cfg = build_config(CacheConfig, vars(args))
    kept_any = False
    for title, folder, _, entries, _ in list(_caches(cfg)):
        sizes = {entry.lock: entry.nbytes for entry in entries}  # before they are gone
        if title.startswith("compiled"):
            removed, kept = compiled_cache.clear(cfg.compile_cache_dir)
        else:
            removed, kept = cache_entries.clear(cfg.cache_dir)
        freed = sum(sizes.get(entry.lock, 0) for entry in removed)
        print(f"fastpix cache clear: {title}: {len(removed)} entries removed ({_size(freed)}) from {folder}")
        for entry in kept:
            print(f"fastpix cache clear: kept, in use by a running process: {entry.what}")
        kept_any = kept_any or bool(kept)
    return 1 if kept_any else 0


def register(sub):
    p = sub.add_parser(
        "cache",
        help="what fastpix keeps on disk: `fastpix cache list`, `fastpix cache clear` [--compiled] [--pairs]",
        allow_abbrev=False,
    )
    cache_sub = p.add_subparsers(dest="cache_command", required=True, metavar="WHAT")
    subcommand(
        cache_sub,
        "list",
        cmd_cache_list,
        "the compiled generators and decode caches on disk, entry by entry",
        (CacheConfig, "caches"),
    )
    subcommand(
        cache_sub,
        "clear",
        cmd_cache_clear,
        "remove what the caches hold, except entries in use",
        (CacheConfig, "caches"),
    )
