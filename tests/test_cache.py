"""The decode-once cache and its loader: batches equal make_loader's bit for bit; keying, rebuilds, bad files."""

import json
import os

import numpy as np
import pytest
import torch
from paired_batches import assert_same_batches, dataset, pipeline_batches, reference_batches
from PIL import Image

from fastpix.data import cache as C
from fastpix.data import resized_pairs
from fastpix.data.cache import CachedLoader, PairCache
from fastpix.data.dataset import DataError, make_loader
from fastpix.data.decode import backend
from fastpix.data.stream import make_pipeline
from fastpix.errors import ConfigError, ResourceError


@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])
@pytest.mark.parametrize("nc", [(3, 3), (1, 3), (3, 1)], ids=["rgb", "grey_in", "grey_out"])
@pytest.mark.parametrize("flip", [True, False], ids=["flip", "noflip"])
def test_cache_equals_paired_dataset(data, tmp_path, direction, nc, flip):
    ds = dataset(data, direction, nc, flip)
    pipe = CachedLoader(PairCache(ds, cache_dir=str(tmp_path / "c"), progress=False), 3, seed=7)
    for epoch in (1, 2):
        assert_same_batches(pipeline_batches(pipe, epoch), reference_batches(ds, 3, 7, epoch))


def test_loop_hooks_and_resume_and_ranks(data, tmp_path):
    ds = dataset(data, seed=11)
    cache = PairCache(ds, cache_dir=str(tmp_path / "c"), progress=False)
    pipe = CachedLoader(cache, 4, seed=3)
    pipe.sampler.set_position(4, 2)  # the training loop's way
    pipe.dataset.set_epoch(4)
    assert_same_batches(list(pipe), reference_batches(ds, 4, 3, 4, start=2))
    for rank in (0, 1):
        pipe = CachedLoader(cache, 4, seed=3, rank=rank, world=2)
        want = reference_batches(ds, 4, 3, 1, rank=rank, world=2)
        assert len(pipe) == len(want) == 2
        assert_same_batches(pipeline_batches(pipe, 1), want)


def test_two_folder_layout(tmp_path):
    rng = np.random.default_rng(0)
    for side in "AB":
        os.makedirs(tmp_path / "d" / "train" / side)
        for i, (w, h) in enumerate([(30, 20), (24, 36), (33, 33)]):
            pixels = rng.integers(0, 256, (h, w, 3), np.uint8)
            Image.fromarray(pixels).save(tmp_path / "d" / "train" / side / f"{i}.png")
    ds = dataset(str(tmp_path / "d"), "BtoA", (1, 3))
    pipe = CachedLoader(PairCache(ds, cache_dir=str(tmp_path / "c"), progress=False), 2, seed=1)
    assert_same_batches(pipeline_batches(pipe, 3), reference_batches(ds, 2, 1, 3))


def test_reuse_and_rebuild(data):
    folder = C.default_cache_dir(dataset(data))  # the default place, in the user's cache directory
    assert not PairCache(dataset(data), progress=False).hit
    assert PairCache(dataset(data), progress=False).hit
    assert not PairCache(dataset(data, nc=(1, 3)), progress=False).hit  # options are part of the key
    assert not PairCache(dataset(data, direction="BtoA"), progress=False).hit
    assert not PairCache(dataset(data, load=36), progress=False).hit
    assert PairCache(dataset(data, load=36), progress=False).hit
    assert len([n for n in os.listdir(folder) if n.endswith(".json")]) == 1  # older builds were removed
    victim = os.path.join(data, "train", "0002.png")
    st = os.stat(victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not PairCache(dataset(data, load=36), progress=False).hit
    # a changed file (same mtime, other content and size) is rebuilt, and the new pixels served
    Image.open(os.path.join(data, "train", "0005.png")).save(victim, compress_level=0)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds = dataset(data, load=36)
    cache = PairCache(ds, progress=False)
    assert not cache.hit
    assert_same_batches(pipeline_batches(CachedLoader(cache, 8, seed=2), 0), reference_batches(ds, 8, 2, 0))


def test_interrupted_build_is_not_reused(data, tmp_path, monkeypatch):
    calls = []
    real = resized_pairs.decode_pairs_into

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(resized_pairs, "decode_pairs_into", failing)
    folder = str(tmp_path / "c")
    with pytest.raises(KeyboardInterrupt):
        PairCache(dataset(data), cache_dir=folder, chunk=3, progress=False)
    assert os.listdir(folder) == []  # no manifest, no temporary files
    monkeypatch.setattr(resized_pairs, "decode_pairs_into", real)
    ds = dataset(data)
    cache = PairCache(ds, cache_dir=folder, chunk=3, progress=False)
    assert not cache.hit
    assert_same_batches(pipeline_batches(CachedLoader(cache, 3, seed=0), 0), reference_batches(ds, 3, 0, 0))


def test_memmap_placement(data, tmp_path):
    ds = dataset(data, "BtoA", (3, 1))
    cache = PairCache(ds, cache_dir=str(tmp_path / "c"), placement="memmap", progress=False)
    assert cache.placement == "memmap"
    with open(cache.stem + ".json") as f:
        assert json.load(f)["key"] == cache.key
    assert_same_batches(pipeline_batches(CachedLoader(cache, 5, seed=4), 3), reference_batches(ds, 5, 4, 3))


def test_bad_file_named_or_skipped(data, tmp_path):
    bad = os.path.join(data, "train", "0003.png")
    with open(bad, "wb") as f:
        f.write(b"not an image")
    with pytest.raises(DataError, match="0003.png"):
        PairCache(dataset(data), cache_dir=str(tmp_path / "c"), progress=False)
    ds = dataset(data, skip_bad_images=True)
    with pytest.warns(UserWarning, match="0003.png"):
        cache = PairCache(ds, cache_dir=str(tmp_path / "c"), progress=False)
    assert cache.bad == {3}
    pipe = CachedLoader(cache, 2, seed=1)
    got = pipeline_batches(pipe, 0)
    assert all(3 not in b["index"] for b in got if b is not None)
    with pytest.warns(UserWarning):
        assert_same_batches(got, reference_batches(ds, 2, 1, 0))
    with pytest.raises(DataError, match="0003.png"):  # a cached record of a bad file still fails without skipping
        PairCache(dataset(data), cache_dir=str(tmp_path / "c"), progress=False)


def test_make_pipeline_modes(data, tmp_path):
    ds = dataset(data)
    pipe = make_pipeline(ds, 4, seed=2, cache_dir=str(tmp_path / "c"), progress=False)
    assert pipe.mode == "cache"
    want = reference_batches(ds, 4, 2, 1)
    assert_same_batches(pipeline_batches(pipe, 1), want)
    loader = make_pipeline(ds, 4, seed=2, mode="loader", num_threads=0)
    assert_same_batches(pipeline_batches(loader, 1), want)
    other = dataset(data, load=32)
    other.preprocess = "scale_width_and_crop"
    assert make_pipeline(other, 4, progress=False).mode == "loader"
    with pytest.raises(ConfigError, match="resize_and_crop"):
        PairCache(other, cache_dir=str(tmp_path / "c"))


@pytest.mark.parametrize("channels", [1, 3])
def test_crop_paths_agree(channels, monkeypatch):
    """The GPU's gather path (run on the CPU), the native one-pass crop and torch's slicing path, against numpy."""
    from fastpix.data import decode
    from fastpix.data.augment import augment, crop_flip, crop_flip_params

    src = torch.randint(0, 256, (6, 20, 20, channels), dtype=torch.uint8)
    rows, indices = [4, 0, 5, 2], [40, 10, 50, 20]
    for epoch in range(4):
        params = crop_flip_params(indices, 3, epoch, 20, 16, True)
        want = [
            src[r, y : y + 16, x : x + 16].flip(1) if f else src[r, y : y + 16, x : x + 16]
            for r, x, y, f in zip(rows, *params)
        ]
        want = torch.stack(want).permute(0, 3, 1, 2)
        assert params[2].any() and not params[2].all()  # both kinds of sample are in the batch
        assert torch.equal(crop_flip(src, rows, params, 16, gather=True), want)
        assert torch.equal(crop_flip(src, rows, params, 16, gather=False), want)  # native where built
        normalised = augment(src, src, rows, indices, 3, epoch, 16, True)  # the fused native pass where built
        assert torch.equal(normalised[0], want.float().div(255).sub_(0.5).div_(0.5))
        staging = torch.full((4, 16, 16, channels), 7, dtype=torch.uint8)
        assert torch.equal(crop_flip(src, rows, params, 16, out=staging), want)
        assert torch.equal(staging.permute(0, 3, 1, 2), want)
        with monkeypatch.context() as m:
            m.setattr(decode, "backend", lambda: "pil")
            assert torch.equal(crop_flip(src, rows, params, 16, gather=False), want)
            staging.zero_()
            assert torch.equal(crop_flip(src, rows, params, 16, out=staging), want)
            assert torch.equal(staging.permute(0, 3, 1, 2), want)
            assert all(
                torch.equal(x, y) for x, y in zip(augment(src, src, rows, indices, 3, epoch, 16, True), normalised)
            )


@pytest.mark.skipif(backend() != "native", reason="fastpix._decode not built")
def test_native_crop_checks_its_arguments():
    from fastpix.data.decode import crop_flip_into

    src, out = np.zeros((2, 10, 10, 3), np.uint8), np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="outside"):
        crop_flip_into(src, [0], [3], [0], [False], out)
    with pytest.raises(ValueError, match="outside"):
        crop_flip_into(src, [2], [0], [0], [False], out)
    with pytest.raises(ValueError, match="one length|len"):
        crop_flip_into(src, [0, 1], [0, 0], [0, 0], [False, True], out)
    with pytest.raises(ValueError, match="contiguous"):
        crop_flip_into(src[:, ::2], [0], [0], [0], [False], np.zeros((1, 4, 4, 3), np.uint8))


def test_crop_staging_buffer_is_checked():
    from fastpix.data.augment import crop_flip, crop_flip_params

    src, params = torch.zeros((2, 20, 20, 3), dtype=torch.uint8), crop_flip_params([0, 1], 0, 0, 20, 16, True)
    with pytest.raises(ValueError, match=r"shape \(2, 16, 16, 3\), not torch.uint8 \(2, 16, 16, 1\)"):
        crop_flip(src, [0, 1], params, 16, out=torch.zeros((2, 16, 16, 1), dtype=torch.uint8))
    with pytest.raises(ValueError, match="contiguous"):
        crop_flip(src, [0, 1], params, 16, out=torch.zeros((2, 16, 16, 3), dtype=torch.uint8).transpose(1, 2))
    with pytest.raises(ValueError, match="gather"):
        crop_flip(src, [0, 1], params, 16, gather=True, out=torch.zeros((2, 16, 16, 3), dtype=torch.uint8))


@pytest.mark.skipif(backend() != "native", reason="fastpix._decode not built")
def test_native_normalized_crop_checks_its_arguments():
    from fastpix.data.decode import crop_flip_normalize_into

    src, table = np.zeros((2, 10, 10, 3), np.uint8), np.zeros(256, np.float32)
    out = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="table"):
        crop_flip_normalize_into(src, [0], [0], [0], [False], table[:255], out)
    with pytest.raises(ValueError, match="float32"):
        crop_flip_normalize_into(src, [0], [0], [0], [False], table, out.astype(np.float64))
    with pytest.raises(ValueError, match=r"\(len\(rows\), C, crop, crop\)"):
        crop_flip_normalize_into(src, [0], [0], [0], [False], table, np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="outside"):
        crop_flip_normalize_into(src, [0], [3], [0], [True], table, out)


@pytest.mark.skipif(backend() != "native", reason="fastpix._decode not built")
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("portable", [False, True], ids=["simd", "portable"])
def test_native_crops_at_every_width(channels, portable):
    """The native mirror kernels move 16 RGB pixels (SIMD), 4 RGB or 8 grey pixels (64-bit words), then single
    pixels: crop widths ending in each, uint8 and normalised, on 1 and 3 threads, against torch's slicing and
    to_tensor's operations."""
    from fastpix import _decode
    from fastpix.data import decode
    from fastpix.data.augment import crop_flip, crop_flip_normalize

    src = torch.randint(0, 256, (3, 40, 40, channels), dtype=torch.uint8)
    rows, flipped = [2, 0, 1, 2], torch.tensor([True, False, True, True])
    _decode._portable_mirror_only(portable)
    try:
        for crop in (1, 3, 4, 7, 8, 15, 16, 17, 21, 33, 40):
            room = 40 - crop
            xs, ys = torch.tensor([0, room, room // 2, min(1, room)]), torch.tensor([room, 0, min(3, room), room // 3])
            want = torch.stack(
                [
                    src[r, y : y + crop, x : x + crop].flip(1) if f else src[r, y : y + crop, x : x + crop]
                    for r, x, y, f in zip(rows, xs, ys, flipped)
                ]
            )
            assert torch.equal(crop_flip(src, rows, (xs, ys, flipped), crop), want.permute(0, 3, 1, 2))
            threaded = np.zeros(want.shape, np.uint8)
            decode.crop_flip_into(src.numpy(), rows, xs.tolist(), ys.tolist(), flipped.tolist(), threaded, threads=3)
            assert np.array_equal(threaded, want.numpy())
            normalised = want.permute(0, 3, 1, 2).float().div(255).sub_(0.5).div_(0.5)
            got = crop_flip_normalize(src, rows, (xs, ys, flipped), crop)
            assert torch.equal(got, normalised) and got.is_contiguous()
    finally:
        _decode._portable_mirror_only(False)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_table_normalisation_equals_to_tensor(memory_format):
    """The GPU's lookup-table path, run on the CPU, against to_tensor's operations."""
    from fastpix.data.augment import normalize

    crops = torch.arange(256, dtype=torch.uint8).repeat(6).view(2, 3, 16, 16)
    want = crops.float().div(255).sub_(0.5).div_(0.5)
    for table in (True, False):
        got = normalize(crops, memory_format, table=table)
        assert torch.equal(got, want) and got.is_contiguous(memory_format=memory_format)


def test_unwritable_cache_folder_caches_in_memory(data, tmp_path, monkeypatch):
    monkeypatch.setattr(C, "disk_room", lambda folder, nbytes: False)
    ds = dataset(data)
    with pytest.warns(UserWarning, match="in memory only"):
        cache = PairCache(ds, cache_dir=str(tmp_path / "c"), placement="memory", progress=False)
    assert not os.path.exists(tmp_path / "c")
    assert_same_batches(pipeline_batches(CachedLoader(cache, 3, seed=1), 2), reference_batches(ds, 3, 1, 2))


def test_batches_do_not_depend_on_worker_count(data, tmp_path):
    """DataLoader worker processes (0 or 2) and cache build threads (1 or 2) all give the same batches."""
    ds = dataset(data, seed=3)
    want = reference_batches(ds, 3, 8, 2)
    loader, sampler = make_loader(ds, 3, True, 2, 8)
    sampler.set_position(2, 0)
    ds.set_epoch(2)
    assert_same_batches(list(loader), want)
    for threads in (1, 2):
        cache = PairCache(ds, cache_dir=str(tmp_path / f"c{threads}"), threads=threads, progress=False)
        assert_same_batches(pipeline_batches(CachedLoader(cache, 3, seed=8), 2), want)


def test_orphaned_temporary_files_are_removed(data, tmp_path):
    """A build killed outright leaves .tmp-<pid>-… files and no manifest: the next build removes them."""
    import subprocess

    folder = tmp_path / "c"
    folder.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = folder / f".tmp-{dead.pid}-0a1b2c3d-pairs-0123.a"
    orphan.write_bytes(b"\0" * 100)
    live = folder / f".tmp-{os.getpid()}-0a1b2c3d-pairs-4567.a"  # a build still running (this process): left alone
    live.write_bytes(b"\0" * 100)
    cache = PairCache(dataset(data), cache_dir=str(folder), progress=False)
    assert not cache.hit and not orphan.exists() and live.exists()


def test_auto_pipeline_falls_back_to_streaming(data, tmp_path, monkeypatch):
    ds = dataset(data)
    monkeypatch.setattr(C, "available_ram", lambda: 0)
    monkeypatch.setattr(C, "disk_room", lambda folder, nbytes: False)
    pipe = make_pipeline(ds, 4, seed=2, cache_dir=str(tmp_path / "c"), progress=False)
    assert pipe.mode == "stream"
    assert_same_batches(pipeline_batches(pipe, 1), reference_batches(ds, 4, 2, 1))
    with pytest.raises(ResourceError, match="--data_pipeline stream"):
        make_pipeline(ds, 4, mode="cache", cache_dir=str(tmp_path / "c"), progress=False)


def test_ranks_on_one_machine_share_ram(data, monkeypatch):
    """Each DDP rank keeps its own in-RAM copy: with 4 local ranks, a cache that fits once may not fit four times."""
    ds = dataset(data)
    monkeypatch.setattr(C, "available_ram", lambda: 3 * C.cache_nbytes(ds))
    assert C.choose_placement(ds, "cpu", None, copies=1) == "memory"
    assert C.choose_placement(ds, "cpu", None, copies=4) == "memmap"


# --------------------------------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.parametrize("placement", ["gpu", "memory", "memmap"])
def test_cache_on_cuda_equals_paired_dataset(data, tmp_path, placement):
    """GPU-resident cache (crops gathered on the GPU), pinned RAM and memory-mapped caches (crops cut on the CPU
    into pinned memory, copied asynchronously): batches equal the CPU DataLoader's bit for bit, channels_last."""
    ds = dataset(data, "BtoA", (1, 3))
    cache = PairCache(ds, "cuda", cache_dir=str(tmp_path / "c"), placement=placement, progress=False)
    assert cache.a.device.type == ("cuda" if placement == "gpu" else "cpu")
    if placement == "memory":
        assert cache.a.is_pinned() and cache.b.is_pinned()
    pipe = CachedLoader(cache, 3, seed=7, device="cuda")
    for epoch in (0, 1):
        got = pipeline_batches(pipe, epoch)
        for batch in got:
            assert batch["A"].is_cuda and batch["A"].is_contiguous(memory_format=torch.channels_last)
        torch.cuda.synchronize()
        assert_same_batches(
            [{k: (v.cpu() if torch.is_tensor(v) else v) for k, v in b.items()} for b in got],
            reference_batches(ds, 3, 7, epoch),
        )


@pytest.mark.gpu
def test_auto_placement_on_cuda_is_the_gpu(data, tmp_path):
    pipe = make_pipeline(dataset(data), 4, device="cuda", cache_dir=str(tmp_path / "c"), progress=False)
    assert pipe.mode == "cache" and pipe.cache.placement == "gpu" and pipe.cache.a.is_cuda
