"""Data-pipeline benchmarks (pytest-benchmark).

    .venv/bin/python -m pytest bench/bench_data.py --benchmark-json=/tmp/bench_data.json

Each benchmark processes one batch of aligned A|B JPEGs and records pairs/s in extra_info; benchmarks on the same
source size share a group so the PIL reference chain and the decoder variants sit side by side.
"""
import io

import numpy as np
import pytest
from PIL import Image

from fastpix.data import decode as D

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


def _record(benchmark, label, paths, fn):
    benchmark.group = f"decode {label} -> {TARGET[0]}x{TARGET[1]} (batch {len(paths)})"
    benchmark.extra_info["backend"] = D.backend()
    benchmark(fn)
    benchmark.extra_info["pairs_per_s"] = len(paths) / benchmark.stats.stats.mean


def test_pil_reference_chain(benchmark, jpeg_batch):
    label, paths = jpeg_batch
    _record(benchmark, label, paths, lambda: _reference_chain(paths))


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
