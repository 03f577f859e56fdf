"""Data-pipeline benchmarks (pytest-benchmark).

    fastpix bench --suite data (or pytest bench/suites/bench_data.py --benchmark-json=/tmp/bench_data.json)

Each benchmark processes one batch of aligned A|B JPEGs and records pairs/s in extra_info; benchmarks on the same
source size share a group so the PIL reference chain and the decoder variants sit side by side.
"""

import os
import resource
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from fastpix.data import decode as D


@pytest.fixture(scope="module", autouse=True)
def one_intra_op_thread():
    """One torch intra-op thread, as in a DataLoader worker: on a small shared machine, OpenMP threads waiting for
    a core cost more than they parallelise, and the paths compared here parallelise with threads of their own."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------- decoder

BATCH = 16
TARGET = (286, 286)  # the reference's load_size for 256² crops
SOURCES = [(512, 256), (1200, 600)]


def _photo_like(w, h, seed):
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w]
    ramp = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 255 // (w + h)], -1)
    arr = np.clip(ramp + rng.randint(-30, 30, ramp.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.fixture(scope="module", params=SOURCES, ids=lambda s: f"{s[0]}x{s[1]}")
def jpeg_batch(request, tmp_path_factory):
    w, h = request.param
    root = tmp_path_factory.mktemp(f"pairs_{w}x{h}")
    paths = []
    for i in range(BATCH):
        p = root / f"{i:03d}.jpg"
        _photo_like(w, h, i).save(p, "JPEG", quality=90)
        paths.append(str(p))
    return f"{w}x{h}", paths


def _reference_chain(paths):
    """The reference AlignedDataset's PIL work per pair: open, convert, crop halves, bicubic resize each."""
    for p in paths:
        ab = Image.open(p).convert("RGB")
        w, h = ab.size
        w2 = int(w / 2)
        ab.crop((0, 0, w2, h)).resize(TARGET, Image.Resampling.BICUBIC)
        ab.crop((w2, 0, w, h)).resize(TARGET, Image.Resampling.BICUBIC)


def _cpu_seconds():
    """CPU time of this process (all threads) and of its reaped children (DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(benchmark, pairs, fn, **pedantic):
    """Run the benchmark and record pairs_per_s (wall clock) and pairs_per_cpu_s (pairs per busy core)."""
    cpu = []

    def call():
        start = _cpu_seconds()
        fn()
        cpu.append(_cpu_seconds() - start)

    if pedantic:
        benchmark.pedantic(call, **pedantic)
    else:
        benchmark(call)
    benchmark.extra_info["pairs_per_s"] = pairs / benchmark.stats.stats.mean
    benchmark.extra_info["pairs_per_cpu_s"] = pairs * len(cpu) / max(sum(cpu), 1e-9)


def _record(benchmark, label, paths, fn, baseline=False):
    benchmark.group = f"decode {label} -> {TARGET[0]}x{TARGET[1]} (batch {len(paths)})"
    benchmark.extra_info["backend"] = D.backend()
    benchmark.extra_info["baseline"] = baseline
    _timed(benchmark, len(paths), fn)


def test_pil_reference_chain(benchmark, jpeg_batch):
    label, paths = jpeg_batch
    _record(benchmark, label, paths, lambda: _reference_chain(paths), baseline=True)


@pytest.mark.parametrize("draft", [False, True], ids=["exact", "draft"])
def test_decode_pair(benchmark, jpeg_batch, draft):
    label, paths = jpeg_batch
    _record(benchmark, label, paths, lambda: [D.decode_pair(p, size=TARGET, draft=draft) for p in paths])


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_pairs_into(benchmark, jpeg_batch, threads):
    label, paths = jpeg_batch
    out_a = np.empty((len(paths), TARGET[1], TARGET[0], 3), np.uint8)
    out_b = np.empty_like(out_a)

    def run():
        errors = D.decode_pairs_into(paths, out_a, out_b, TARGET, threads=threads)
        assert not any(errors), errors

    _record(benchmark, label, paths, run)


# ----------------------------------------------------------------------------------------------- pipeline
# One epoch of `pipeline.pairs` pairs into training batches (286² resize, 256² crops, flips, [-1, 1] float32 NCHW on
# the CPU), per path. pairs_per_s is wall-clock; pairs_per_cpu_s divides by the CPU time of this process and its
# DataLoader workers, i.e. pairs per second per busy core, which is what the "per core" targets compare.

PIPELINE_ROUNDS = 3


@dataclass(frozen=True)
class Pipeline:
    """The pipeline cases' epoch: its pairs, and the rounds of a cached epoch (it takes milliseconds: more rounds,
    so that a busy neighbour's bursts average out)."""

    pairs: int = 64
    cache_rounds: int = 20


PIPELINES = {"dry": Pipeline(16, 2)}  # the other configurations time the default epoch


@pytest.fixture(scope="module")
def pipeline(configuration):
    return PIPELINES.get(configuration, Pipeline())


@pytest.fixture(scope="module", params=SOURCES, ids=lambda s: f"{s[0]}x{s[1]}")
def pipeline_data(request, tmp_path_factory, pipeline):
    """A data set of `pipeline.pairs` aligned JPEGs, and its PairedDataset (286² resize, 256² crops)."""
    from fastpix.data.dataset import PairedDataset

    w, h = request.param
    root = tmp_path_factory.mktemp(f"dataset_{w}x{h}")
    (root / "train").mkdir()
    for i in range(pipeline.pairs):
        _photo_like(w, h, i).save(root / "train" / f"{i:03d}.jpg", "JPEG", quality=90)
    return f"{w}x{h}", PairedDataset(str(root), "train", load_size=TARGET[0], crop_size=256, seed=0)


def _record_epoch(benchmark, label, fn, pairs, baseline=False, rounds=PIPELINE_ROUNDS):
    benchmark.group = f"pipeline {label} -> {TARGET[0]}² -> 256² crops (batch {BATCH}, {pairs} pairs)"
    benchmark.extra_info["backend"] = D.backend()
    benchmark.extra_info["baseline"] = baseline
    _timed(benchmark, pairs, fn, rounds=rounds, warmup_rounds=1)


def _epoch(pipeline):
    for batch in pipeline:
        assert batch["A"].dtype == torch.float32 and batch["A"].shape[1:] == (3, 256, 256)


@pytest.mark.parametrize("workers", sorted({0, 1, 2, os.cpu_count() or 1}))  # all cores too
def test_pipeline_dataloader(benchmark, pipeline_data, pipeline, workers):
    """The reference chain (PIL decode, bicubic resize, crop, flip, to_tensor per item) in a DataLoader, as the
    reference trains; workers are started for every epoch, as there."""
    from fastpix.data.dataset import make_loader

    label, ds = pipeline_data
    loader, _ = make_loader(ds, BATCH, True, workers)
    _record_epoch(benchmark, label, lambda: _epoch(loader), pipeline.pairs, baseline=workers == 0)


class _PeakRss:
    """Samples this process's resident memory every millisecond while active."""

    def __init__(self):
        self.peak, self.running = 0, False

    @staticmethod
    def now():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.start, self.peak, self.running = self.now(), self.now(), True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.now())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


@pytest.mark.parametrize("threads", sorted({1, 2, os.cpu_count() or 1}))  # all cores too
def test_pipeline_stream(benchmark, pipeline_data, pipeline, threads):
    """Native decode threads into a ring of 3 reused batch buffers; crops, flips and normalisation batched."""
    from fastpix.data.stream import StreamLoader

    label, ds = pipeline_data
    stream = StreamLoader(ds, BATCH, threads=threads, depth=3)
    after_epoch = []  # resident MiB after each epoch: flat after the first when memory is bounded

    def epoch():
        _epoch(stream)
        after_epoch.append(round(_PeakRss.now() / 2**20, 1))

    with _PeakRss() as rss:
        _record_epoch(benchmark, label, epoch, pipeline.pairs)
    ring = stream.depth * BATCH * TARGET[0] * TARGET[1] * 6
    benchmark.extra_info.update(
        ring_mib=ring / 2**20,
        rss_start_mib=rss.start / 2**20,
        rss_peak_mib=rss.peak / 2**20,
        rss_after_epoch_mib=after_epoch,
    )


@pytest.mark.parametrize("placement", ["memory", "memmap"])
def test_pipeline_cache(benchmark, pipeline_data, pipeline, placement, tmp_path):
    """Serving an epoch from a built cache: batched crop/flip and normalisation into float32 CPU tensors."""
    from fastpix.data.cache import CachedLoader, PairCache

    label, ds = pipeline_data
    loader = CachedLoader(PairCache(ds, cache_dir=str(tmp_path), placement=placement, progress=False), BATCH)
    _record_epoch(benchmark, label, lambda: _epoch(loader), pipeline.pairs, rounds=pipeline.cache_rounds)


@pytest.mark.parametrize("buffers", ["fresh", "reused"])
def test_pipeline_cache_uint8_crops(benchmark, pipeline_data, pipeline, tmp_path, buffers):
    """The CPU's whole share of the cache path when training on a GPU: uint8 crops/flips of an in-RAM cache (the
    bytes that cross to the device; normalisation then runs there). fresh: a new tensor per batch and side, as on a
    CPU-only machine (page faults included); reused: two staging buffers, as the pinned path gets them back from
    CUDA's caching host allocator."""
    from fastpix.data.augment import crop_flip, crop_flip_params
    from fastpix.data.cache import PairCache

    label, ds = pipeline_data
    cache = PairCache(ds, cache_dir=str(tmp_path), placement="memory", progress=False)
    order = list(range(pipeline.pairs))
    staging = [torch.empty((BATCH, 256, 256, 3), dtype=torch.uint8) for _ in range(2)]

    def epoch():
        for start in range(0, pipeline.pairs, BATCH):
            rows = order[start : start + BATCH]
            params = crop_flip_params(rows, 0, 0, TARGET[0], 256, True)
            for src, out in zip((cache.a, cache.b), staging):
                crop_flip(src, rows, params, 256, out=out if buffers == "reused" and len(rows) == BATCH else None)

    _record_epoch(benchmark, label, epoch, pipeline.pairs, rounds=pipeline.cache_rounds)
    benchmark.extra_info["buffers"] = buffers


# ----------------------------------------------------------------------------------------------- colorization
# One epoch of `pipeline.pairs` single RGB JPEGs into colorization batches (286² resize, 256² crops, flips, then
# A = L/50 − 1 and B = ab/110 float32 NCHW on the CPU): the reference's per-item work (PIL, then scikit-image's
# rgb2lab in float64), fastpix's loader (PIL, then fastpix.data.lab per item) and its cache (crops of the cached
# RGB, then Lab for the whole batch).


@pytest.fixture(scope="module", params=[(256, 256), (600, 600)], ids=lambda s: f"{s[0]}x{s[1]}")
def colorization_data(request, tmp_path_factory, pipeline):
    from fastpix.data.colorization import ColorizationDataset

    w, h = request.param
    root = tmp_path_factory.mktemp(f"colour_{w}x{h}")
    (root / "train").mkdir()
    for i in range(pipeline.pairs):
        _photo_like(w, h, i).save(root / "train" / f"{i:03d}.jpg", "JPEG", quality=90)
    return f"{w}x{h}", ColorizationDataset(str(root), "train", load_size=TARGET[0], crop_size=256, seed=0)


def _record_colour_epoch(benchmark, label, fn, pairs, baseline=False, rounds=PIPELINE_ROUNDS):
    benchmark.group = f"colorization {label} -> {TARGET[0]}² -> 256² crops -> Lab (batch {BATCH}, {pairs} images)"
    benchmark.extra_info["backend"] = D.backend()
    benchmark.extra_info["baseline"] = baseline
    _timed(benchmark, pairs, fn, rounds=rounds, warmup_rounds=1)


def _colour_epoch(pipeline):
    for batch in pipeline:
        assert batch["A"].shape[1:] == (1, 256, 256) and batch["B"].shape[1:] == (2, 256, 256)


def test_colorization_reference_items(benchmark, colorization_data, pipeline):
    """The reference's ColorizationDataset work per item: PIL open, convert, resize, crop, then rgb2lab (float64),
    float32, and the scaling (its random crop and flip cost the same as fastpix's)."""
    color = pytest.importorskip("skimage.color", reason="the reference's conversion is scikit-image's")
    label, ds = colorization_data

    def epoch():
        for path, _ in ds.paths:
            image = Image.open(path).convert("RGB").resize(TARGET, Image.Resampling.BICUBIC).crop((7, 7, 263, 263))
            lab = torch.from_numpy(color.rgb2lab(np.asarray(image)).astype(np.float32)).permute(2, 0, 1)
            lab[[0], ...] / 50.0 - 1.0, lab[[1, 2], ...] / 110.0

    _record_colour_epoch(benchmark, label, epoch, pipeline.pairs, baseline=True)


def test_colorization_loader(benchmark, colorization_data, pipeline):
    """fastpix's per-item path (--data_pipeline loader, no workers): the same chain with fastpix.data.lab."""
    from fastpix.data.dataset import make_loader

    label, ds = colorization_data
    loader, _ = make_loader(ds, BATCH, True, 0)
    _record_colour_epoch(benchmark, label, lambda: _colour_epoch(loader), pipeline.pairs)


def test_colorization_cache(benchmark, colorization_data, pipeline, tmp_path):
    """An epoch from a built in-RAM cache: crops/flips of the cached RGB, Lab of each whole batch."""
    from fastpix.data.cache import CachedLoader, PairCache

    label, ds = colorization_data
    loader = CachedLoader(PairCache(ds, cache_dir=str(tmp_path), placement="memory", progress=False), BATCH)
    _record_colour_epoch(benchmark, label, lambda: _colour_epoch(loader), pipeline.pairs, rounds=pipeline.cache_rounds)
