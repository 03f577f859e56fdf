"""Streaming for data sets too big to cache, and make_pipeline, which picks the data path for the training loop.

StreamLoader: one background thread decodes each batch with decode_pairs_into (native threads, GIL released) into a
ring of `depth` reused (pinned, on CUDA) uint8 buffers ahead of the consumer; the consumer copies a buffer to the
device (a side stream, non_blocking, on CUDA) and crops/flips/normalises there (fastpix.data.augment), so batches
equal PairedDataset's (colorization's: ColorizationDataset's, converted to Lab there). Memory is bounded by the
ring; the thread stops when the consumer stops (break, error, end).
"""

from __future__ import annotations

import os
import queue
import threading

import torch

from fastpix.cache_folders import GB
from fastpix.config import DATA_PIPELINE_CHOICES, PAIRS_CACHE_MAX_GB
from fastpix.data.cache import CachedLoader, PairCache, cache_nbytes, choose_placement
from fastpix.data.dataset import EpochSampler, PairedDataset, make_loader
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

_DONE = object()
_POLL_S = 0.05


class _Slot:
    def __init__(self, shape_a, shape_b, pin):
        self.a = torch.empty(shape_a, dtype=torch.uint8, pin_memory=pin)
        self.b = torch.empty(shape_b, dtype=torch.uint8, pin_memory=pin)
        self.copied = None  # CUDA event: the device copy that must finish before the slot is decoded into again


class _Producer:
    """The decode thread of one pass over a batch plan; hands filled slots over `ready`."""

    def __init__(self, loader: StreamLoader, plan):
        self.loader, self.plan = loader, plan
        self.ready: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fastpix-stream", daemon=True)
        self.thread.start()

    def _free_slot(self):
        """A slot to decode into: a returned one, else a new one while the ring is below depth, else wait."""
        loader = self.loader
        while not self.stopping.is_set():
            try:
                return loader.free.get_nowait()
            except queue.Empty:
                pass
            with loader.lock:
                if loader.slots_allocated < loader.depth:
                    loader.slots_allocated += 1
                    return loader.new_slot()
            try:
                return loader.free.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return None

    def _run(self):
        ds, threads = self.loader.dataset, self.loader.threads
        try:
            for indices in self.plan:
                slot = self._free_slot()
                if slot is None:
                    return
                if slot.copied is not None:
                    slot.copied.synchronize()
                n = len(indices)
                errors = decode_into(ds, indices, slot.a[:n].numpy(), slot.b[:n].numpy(), threads)
                self.ready.put((slot, indices, errors))
            self.ready.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self.ready.put(exc)

    def next(self):
        while True:
            try:
                return self.ready.get(timeout=_POLL_S)
            except queue.Empty:
                if not self.thread.is_alive() and self.ready.empty():
                    raise RuntimeError("the stream's decode thread ended without a result") from None

    def stop(self, timeout=None):
        self.stopping.set()
        self.thread.join(timeout)


def require_readable(batches, dataset, sampler):
    """The batches of one pass; after a pass over the whole data set (from its start, one process) that read no
    image, the data set's none_readable error: --skip_bad_images must not train on nothing."""
    read = False
    for batch in batches:
        read = read or batch is not None
        yield batch
    if not read and sampler.start == 0 and sampler.world == 1:
        raise dataset.none_readable()


class StreamLoader:
    """Batches decoded on the fly, identical to make_loader's (order, boundaries, crops, flips, keys).

    Positioning as CachedLoader: set_position(epoch, start), or .sampler.set_position + .dataset.set_epoch.
    depth: ring buffers (each one per-rank batch of load_size² A and B); threads: native decode threads.
    """

    mode: str  # the --data_pipeline this is, set by make_pipeline

    def __init__(
        self,
        dataset: PairedDataset,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        device="cpu",
        threads: int = 2,
        depth: int = 3,
        shuffle: bool = True,
    ):
        check_cacheable(dataset)
        self.dataset, self.device, self.threads, self.depth = dataset, torch.device(device), threads, depth
        self.sampler = EpochSampler(len(dataset), seed, shuffle, batch_size, rank, world)
        self.per_rank = batch_size // world
        self.free: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.slots_allocated = 0
        self._producer = None
        self._side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def new_slot(self):
        size, (ca, cb) = self.dataset.load_size, channels(self.dataset)
        return _Slot((self.per_rank, size, size, ca), (self.per_rank, size, size, cb), self.device.type == "cuda")

    def set_position(self, epoch: int, start: int = 0):
        self.sampler.set_position(epoch, start)
        self.dataset.set_epoch(epoch)

    def __len__(self):
        return -(-len(self.sampler) // self.per_rank)

    def _to_device(self, slot, n):
        if self._side is None:
            return slot.a[:n], slot.b[:n]
        main = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._side):
            a = slot.a[:n].to(self.device, non_blocking=True)
            b = slot.b[:n].to(self.device, non_blocking=True)
            slot.copied = torch.cuda.Event()
            slot.copied.record(self._side)
        main.wait_stream(self._side)
        a.record_stream(main)  # allocated on the side stream, used on the main one
        b.record_stream(main)
        return a, b

    def __iter__(self):
        return require_readable(self._batches(), self.dataset, self.sampler)

    def _batches(self):
        if self._producer is not None:  # a pass left early: wait until its thread is done with the slots
            self._producer.stop()
            while not self._producer.ready.empty():
                item = self._producer.ready.get()
                if isinstance(item, tuple):
                    self.free.put(item[0])
        ds = self.dataset
        seed, epoch, skip = ds.seed, ds.epoch, ds.skip_bad_images
        producer = self._producer = _Producer(self, batch_plan(self.sampler, self.per_rank))
        try:
            while True:
                item = producer.next()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                slot, indices, errors = item
                try:
                    bad = {i: msg for i, msg in zip(indices, errors) if msg is not None}
                    report_bad(bad, skip)
                    rows = [r for r, i in enumerate(indices) if i not in bad]
                    if not rows:
                        batch = None
                    else:
                        kept = [indices[r] for r in rows]
                        a, b = self._to_device(slot, len(indices))
                        batch = make_batch(ds, kept, *augment_items(ds, a, b, rows, kept, seed, epoch, self.device))
                finally:
                    self.free.put(slot)  # on CPU the crops are copies; on CUDA the slot waits on slot.copied
                yield batch
        finally:
            producer.stop(timeout=1.0)


class LoaderPipeline:
    """make_loader's DataLoader behind the pipeline interface; A and B are moved to `device`."""

    mode: str  # the --data_pipeline this is, set by make_pipeline

    def __init__(self, dataset, batch_size, seed, rank, world, device, num_threads, shuffle=True):
        self.dataset, self.device = dataset, torch.device(device)
        self.loader, self.sampler = make_loader(dataset, batch_size, shuffle, num_threads, seed, rank, world)

    def set_position(self, epoch: int, start: int = 0):
        self.sampler.set_position(epoch, start)
        self.dataset.set_epoch(epoch)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        return require_readable(self._batches(), self.dataset, self.sampler)

    def _batches(self):
        for batch in self.loader:
            if batch is not None and self.device.type != "cpu":
                batch["A"] = batch["A"].to(self.device, non_blocking=True)
                batch["B"] = batch["B"].to(self.device, non_blocking=True)
            yield batch


def make_pipeline(
    dataset: PairedDataset,
    batch_size: int,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    device="cpu",
    mode: str = "auto",
    num_threads: int = 2,
    cache_dir: str | None = None,
    shuffle: bool = True,
    progress: bool = True,
    cache_max_gb: float = PAIRS_CACHE_MAX_GB,
):
    """The training data path: an object iterated once per epoch like make_loader's DataLoader, yielding
    {"A", "B" (on device), "A_paths", "B_paths", "index"} or None (a wholly unreadable batch), with
    set_position(epoch, start) (or .sampler.set_position and .dataset.set_epoch, as with make_loader) and .mode.

    mode "auto": the cache when it fits on the GPU, in RAM or on disk, else streaming; the DataLoader when the
    preprocess is not resize_and_crop (only that one is deterministic before the crop). "cache", "stream" and
    "loader" force one. batch_size is the global batch; each rank reads its slice of every global batch.
    cache_max_gb bounds the decode caches on disk (cache.py).
    """
    device = torch.device(device)
    if mode not in DATA_PIPELINE_CHOICES:
        raise ValueError(f"--data_pipeline must be one of {', '.join(DATA_PIPELINE_CHOICES)}, not {mode!r}")
    # Ranks on one machine each hold a copy of an in-RAM cache (torchrun sets LOCAL_WORLD_SIZE).
    copies = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    placement: str | None = "auto"
    if mode in ("auto", "cache") and dataset.preprocess == "resize_and_crop":
        placement = choose_placement(dataset, device, cache_dir, copies, cache_max_gb * GB)
        if mode == "auto":
            mode = "cache" if placement is not None else "stream"
        elif placement is None:
            raise ResourceError(
                f"a cache of {cache_nbytes(dataset) / 2**30:.1f} GiB fits neither on the device, in "
                f"RAM nor on disk: use --data_pipeline stream"
            )
    elif mode == "auto":
        mode = "loader"
    pipeline: CachedLoader | StreamLoader | LoaderPipeline
    if mode == "cache":
        cache = _build_cache_once(
            dataset, device, cache_dir, placement, num_threads, progress, rank, world, cache_max_gb * GB
        )
        pipeline = CachedLoader(cache, batch_size, seed, rank, world, device, shuffle)
    elif mode == "stream":
        pipeline = StreamLoader(dataset, batch_size, seed, rank, world, device, max(1, num_threads), shuffle=shuffle)
    else:
        pipeline = LoaderPipeline(dataset, batch_size, seed, rank, world, device, num_threads, shuffle)
    pipeline.mode = mode
    return pipeline


def _build_cache_once(dataset, device, cache_dir, placement, threads, progress, rank, world, max_bytes):
    """With several processes, rank 0 builds and the others then find the finished build."""
    dist = world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    if dist and rank != 0:
        torch.distributed.barrier()
    try:
        return PairCache(
            dataset,
            device,
            cache_dir,
            placement,
            threads=max(1, threads),
            progress=progress and rank == 0,
            max_bytes=max_bytes,
        )
    finally:
        if dist and rank == 0:
            torch.distributed.barrier()
