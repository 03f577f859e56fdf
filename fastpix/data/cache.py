"""A decode-once cache of resized pairs, and a loader that serves batches from it.

Only the "resize_and_crop" preprocess (the reference default) is cached: its resize does not depend on the epoch, so
each pair is decoded and resized once to load_size² uint8 A and B; the random crop/flip and the normalisation happen
per batch in fastpix.data.augment, equal bit for bit to PairedDataset's output. Other preprocess modes keep using
PairedDataset through make_loader. Colorization's single images are cached as RGB (a) with an empty b, and
converted to Lab after the crop (augment_colorization), equal bit for bit to ColorizationDataset's items.

The cache is built into files under a cache folder (default: one per data set in the user's cache directory, see
default_cache_dir; nothing is written into the data set unless --cache_dir points there): <stem>.a and <stem>.b hold
the raw (N, L, L, C) uint8 arrays, <stem>.json the manifest. stem is a hash of the files' paths, sizes and mtimes and
of the preprocessing options, so any change builds a new cache; every file is written atomically (fastpix.files)
and the manifest last, after both arrays are in place, so an interrupted build is never taken for a complete one.
The arrays are then kept on the GPU when they fit (under 25% of its free memory), else in (pinned) RAM when they
fit (under half the available memory), else used memory-mapped from disk.

The caches on disk are bounded together (--cache_max_gb, cache_entries.py): a run holds a lease on the build it
uses, and after each new build the least recently used builds no run holds are removed until the bound holds. A
data set whose cache alone exceeds the bound is cached in memory only (or streamed, when it does not fit there).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import warnings

import numpy as np
import torch

from fastpix.cache_folders import GB, Lease, remove_unless_leased
from fastpix.config import PAIRS_CACHE_MAX_GB, user_cache_dir
from fastpix.data import cache_entries
from fastpix.data.dataset import EpochSampler, PairedDataset
from fastpix.data.resized_pairs import (
    augment_items,
    batch_plan,
    channels,
    check_cacheable,
    decode_into,
    make_batch,
    report_bad,
)
from fastpix.errors import ResourceError
from fastpix.files import atomic_write, atomic_write_json, temporary_writer
from fastpix.progress import announced

CACHE_VERSION = 1
log = logging.getLogger(__name__)
GPU_FRACTION, RAM_FRACTION = 0.25, 0.5
PLACEMENTS = ("auto", "gpu", "memory", "memmap")


# --------------------------------------------------------------------------------------------------- placement


def available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cache_nbytes(dataset: PairedDataset) -> int:
    ca, cb = channels(dataset)
    return len(dataset) * dataset.load_size**2 * (ca + cb)


def default_cache_dir(dataset: PairedDataset) -> str:
    """<user cache>/pairs/<data set folder name>-<hash of its absolute path>: data folders are often shared or
    read-only, and a cache is the user's. The builds inside are keyed by the files' content (cache_key)."""
    root = os.path.abspath(dataset.dataroot)
    tag = hashlib.sha256(root.encode()).hexdigest()[:12]
    return os.path.join(user_cache_dir(), "pairs", f"{os.path.basename(root) or 'root'}-{tag}")


def disk_room(folder: str, nbytes: int) -> bool:
    probe = folder
    while not os.path.isdir(probe):
        probe = os.path.dirname(probe) or "."
    return os.access(probe, os.W_OK) and shutil.disk_usage(probe).free > nbytes * 1.02 + (64 << 20)


def choose_placement(
    dataset: PairedDataset, device, cache_dir: str | None, copies: int = 1, max_bytes: float = PAIRS_CACHE_MAX_GB * GB
) -> str | None:
    """Where the cache would live: "gpu", "memory", "memmap", or None when it fits nowhere.

    copies: processes on this machine that each hold the cache (DDP ranks). Each keeps its own copy in RAM, while
    memory-mapped files share one page cache, so RAM must hold all copies. max_bytes: the bound on the caches on
    disk (a cache over it alone is never memory-mapped).
    """
    nbytes, device = cache_nbytes(dataset), torch.device(device)
    if device.type == "cuda" and nbytes < GPU_FRACTION * torch.cuda.mem_get_info(device)[0]:
        return "gpu"
    if nbytes * max(1, copies) < RAM_FRACTION * available_ram():
        return "memory"
    if nbytes <= max_bytes and disk_room(cache_dir or default_cache_dir(dataset), nbytes):
        return "memmap"
    return None


# ------------------------------------------------------------------------------------------------------ cache


def cache_key(dataset: PairedDataset) -> dict:
    files = []
    for pair in dataset.paths:
        for p in dict.fromkeys(pair):  # an aligned pair names its file twice
            try:
                st = os.stat(p)
                files.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
            except OSError:  # a dangling link, a file gone since the listing: the decode names it (or skips it)
                files.append([os.path.abspath(p), None, None])
    return {
        "version": CACHE_VERSION,
        "preprocess": "resize_and_crop",
        "load_size": dataset.load_size,
        "channels": list(channels(dataset)),
        "direction": "BtoA" if dataset.reverse else "AtoB",
        "two_folders": dataset.two_folders,
        "files": files,
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(*paths):
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)


class PairCache:
    """All pairs of a data set, decoded and resized once: self.a (N, L, L, Ca) and self.b (N, L, L, Cb) uint8.

    placement: "auto" | "gpu" | "memory" | "memmap" (see the module doc). self.hit tells whether an existing build
    was reused; self.bad holds the indices that did not decode (empty unless skip_bad_images). max_bytes bounds the
    caches on disk under cache_dir (else under the default root, every data set's folder): see cache_entries.py.
    """

    def __init__(
        self,
        dataset: PairedDataset,
        device="cpu",
        cache_dir: str | None = None,
        placement: str | None = "auto",
        threads: int = 2,
        progress: bool = True,
        chunk: int = 256,
        max_bytes: float = PAIRS_CACHE_MAX_GB * GB,
    ):
        check_cacheable(dataset)
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, not {placement!r}")
        self.dataset, self.device = dataset, torch.device(device)
        self.root, self.max_bytes = cache_dir, max_bytes
        self.cache_dir = cache_dir or default_cache_dir(dataset)
        n, size = len(dataset), dataset.load_size
        ca, cb = channels(dataset)
        self.shape_a, self.shape_b = (n, size, size, ca), (n, size, size, cb)
        if placement == "auto":
            placement = choose_placement(dataset, self.device, self.cache_dir, max_bytes=max_bytes)
            if placement is None:
                raise ResourceError(
                    f"a cache of {cache_nbytes(dataset) / 2**30:.1f} GiB fits neither on the "
                    f"device, in RAM nor in {self.cache_dir}: stream instead"
                )
        self.placement = placement
        key = json.dumps(cache_key(dataset), sort_keys=True)
        self.key = hashlib.sha256(key.encode()).hexdigest()
        self.stem = os.path.join(self.cache_dir, f"pairs-{self.key[:20]}")
        self.lease = self._lease()  # held while this object lives: no other run's bound removes the build
        manifest = self._read_manifest() if self.lease is not None else None
        self.hit = manifest is not None
        sources: list = [self.stem + ".a", self.stem + ".b"]  # the files, or tensors in memory
        nbytes = cache_nbytes(dataset)
        if manifest is None and placement != "memmap" and (nbytes > max_bytes or not disk_room(self.cache_dir, nbytes)):
            why = (
                f"over --cache_max_gb {max_bytes / GB:g}"
                if nbytes > max_bytes
                else f"{self.cache_dir} is not writable or full"
            )
            warnings.warn(
                f"a decode cache of {nbytes / GB:.2f} GB is {why}: caching in memory only, for this run", stacklevel=2
            )
            sources = [torch.empty(s, dtype=torch.uint8) for s in (self.shape_a, self.shape_b)]
            manifest = {"bad": self._decode_all([t.numpy() for t in sources], threads, progress, chunk)}
        elif manifest is None:
            manifest = self._build(threads, progress, chunk)
            self.lease = self._lease()
            cache_entries.prune(max_bytes, self.root or os.path.dirname(self.cache_dir))
        errors = {int(k): v for k, v in manifest["bad"].items()}
        report_bad(errors, dataset.skip_bad_images)
        if len(errors) == n:
            raise dataset.none_readable()
        self.bad = frozenset(errors)
        self.a, self.b = (self._place(src, shape) for src, shape in zip(sources, (self.shape_a, self.shape_b)))

    def _lease(self) -> Lease | None:
        try:
            return Lease(self.stem + ".json")
        except FileNotFoundError:  # not built (or removed just now)
            return None

    def _read_manifest(self):
        try:
            with open(self.stem + ".json") as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            return None
        sizes = [int(np.prod(s)) for s in (self.shape_a, self.shape_b)]
        files_ok = all(
            os.path.exists(p) and os.path.getsize(p) == s for p, s in zip((self.stem + ".a", self.stem + ".b"), sizes)
        )
        return manifest if manifest.get("key") == self.key and files_ok else None

    def _decode_all(self, arrays, threads, progress, chunk) -> dict:
        from tqdm import tqdm

        errors, n = {}, len(self.dataset)
        with tqdm(total=n, unit="pair", desc=f"caching {n} pairs", disable=not progress, leave=False) as bar:
            for start in range(0, n, chunk):
                indices = list(range(start, min(start + chunk, n)))
                stop = start + len(indices)
                status = decode_into(self.dataset, indices, arrays[0][start:stop], arrays[1][start:stop], threads)
                errors.update({str(i): msg for i, msg in zip(indices, status) if msg is not None})
                bar.update(len(indices))
        return errors

    def _build(self, threads, progress, chunk):
        os.makedirs(self.cache_dir, exist_ok=True)
        self._remove_orphans()
        names, shapes = (self.stem + ".a", self.stem + ".b"), (self.shape_a, self.shape_b)
        errors = {}

        def fill(tmp_a, tmp_b):  # both arrays in one pass: each pair is decoded once
            arrays = [np.memmap(p, np.uint8, "w+", shape=s) for p, s in zip((tmp_a, tmp_b), shapes)]
            errors.update(self._decode_all(arrays, threads, progress, chunk))
            for arr in arrays:
                arr.flush()

        what = (
            f"building the decode cache of {len(self.dataset)} pairs ({cache_nbytes(self.dataset) / GB:.2f} GB) "
            f"in {self.cache_dir} (each pair is decoded once; later runs reuse it)"
        )
        with announced(log, what):
            atomic_write(
                names[0],
                lambda tmp_a: atomic_write(names[1], lambda tmp_b: fill(tmp_a, tmp_b), int(np.prod(shapes[1]))),
                int(np.prod(shapes[0])),
            )
        ds = self.dataset
        options = {
            "dataroot": os.path.abspath(ds.dataroot),
            "load_size": ds.load_size,
            "channels": channels(ds),
            "direction": "BtoA" if ds.reverse else "AtoB",
        }
        manifest = {
            "key": self.key,
            "shape_a": self.shape_a,
            "shape_b": self.shape_b,
            "source": os.path.dirname(os.path.abspath(ds.paths[0][0])),
            "bad": errors,
            "options": options,
        }
        atomic_write_json(self.stem + ".json", manifest, indent=None)
        self._remove_stale(manifest["source"])
        return manifest

    def _remove_orphans(self):
        """Temporary files of builds whose process died (killed, so its cleanup never ran) only take disk space."""
        for name in os.listdir(self.cache_dir):
            pid = temporary_writer(name)
            if pid is not None and not _alive(pid):
                _remove(os.path.join(self.cache_dir, name))

    def _remove_stale(self, source):
        """Older builds of the same folder (other files or options) are dead weight: remove them."""
        for name in os.listdir(self.cache_dir):
            stem = os.path.join(self.cache_dir, name[:-5])
            if not name.endswith(".json") or stem == self.stem:
                continue
            if cache_entries.read_manifest(stem + ".json").get("source") == source:
                remove_unless_leased(cache_entries.entry_of(stem + ".json"))  # unless a run still uses it

    def _place(self, source, shape):
        n = int(np.prod(shape))
        if torch.is_tensor(source):  # built in memory
            mapped = source
        else:
            mapped = torch.from_file(source, shared=False, size=n, dtype=torch.uint8).view(shape)
        if self.placement == "memmap" or (
            torch.is_tensor(source) and self.placement == "memory" and self.device.type != "cuda"
        ):
            return mapped
        if self.placement == "gpu":
            out = torch.empty(shape, dtype=torch.uint8, device=self.device)
            step = max(1, (256 << 20) // max(1, n // shape[0]))  # 256 MiB slices: bounded host staging
            for i in range(0, shape[0], step):
                out[i : i + step].copy_(mapped[i : i + step])
            return out
        pin = self.device.type == "cuda"
        out = torch.empty(shape, dtype=torch.uint8, pin_memory=pin)
        out.copy_(mapped)
        return out


class CachedLoader:
    """Batches from a PairCache, identical to make_loader's (same order, boundaries, crops, flips, keys).

    Positioning: either call set_position(epoch, start), or, as with make_loader, sampler.set_position(epoch,
    start) and dataset.set_epoch(epoch): the order comes from .sampler and the crops from .dataset.epoch/.seed, as
    in the DataLoader path. A and B are on `device` (the cache's by default); "index" stays on the CPU.
    """

    mode: str  # the --data_pipeline this is, set by make_pipeline

    def __init__(
        self,
        cache: PairCache,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        device=None,
        shuffle: bool = True,
    ):
        self.cache, self.dataset = cache, cache.dataset
        self.device = torch.device(device) if device is not None else cache.a.device
        self.sampler = EpochSampler(len(self.dataset), seed, shuffle, batch_size, rank, world)
        self.per_rank = batch_size // world

    def set_position(self, epoch: int, start: int = 0):
        self.sampler.set_position(epoch, start)
        self.dataset.set_epoch(epoch)

    def __len__(self):
        return -(-len(self.sampler) // self.per_rank)

    def __iter__(self):
        ds, bad = self.dataset, self.cache.bad
        for indices in batch_plan(self.sampler, self.per_rank):
            indices = [i for i in indices if i not in bad]
            if not indices:
                yield None  # as collate_pairs does when a whole batch was unreadable
                continue
            yield make_batch(
                ds,
                indices,
                *augment_items(ds, self.cache.a, self.cache.b, indices, indices, ds.seed, ds.epoch, self.device),
            )
