"""Data parity with the reference: listing, A|B split, transforms (against a chain built with PIL), errors."""

import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from fastpix.data.dataset import DataError, PairedDataset, list_images, make_loader
from fastpix.data.transforms import sample_crop_flip, sample_rng


def write_ab(path, w, h, seed=0, fmt=None):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, fmt)


def pil_chain(img, preprocess, load, crop, x, y, flip, gray):
    """The reference's torchvision chain, written with PIL and numpy directly."""
    if gray:
        img = img.convert("L")
    if preprocess == "resize_and_crop":
        img = img.resize((load, load), Image.BICUBIC)
    if preprocess in ("scale_width", "scale_width_and_crop"):
        ow, oh = img.size
        if not (ow == load and oh >= crop):
            img = img.resize((load, int(max(load * oh / ow, crop))), Image.BICUBIC)
    if preprocess in ("resize_and_crop", "crop", "scale_width_and_crop") and (img.size[0] > crop or img.size[1] > crop):
        img = img.crop((x, y, x + crop, y + crop))
    if preprocess == "none":
        ow, oh = img.size
        w, h = int(round(ow / 4) * 4), int(round(oh / 4) * 4)
        if (w, h) != (ow, oh):
            img = img.resize((w, h), Image.BICUBIC)
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    arr = np.asarray(img, np.float32) / 255.0
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy((arr.transpose(2, 0, 1) - 0.5) / 0.5)


@pytest.mark.parametrize(
    "preprocess,w,h,load,crop",
    [
        ("resize_and_crop", 2 * 40, 40, 36, 32),
        ("crop", 2 * 45, 41, 36, 32),
        ("scale_width", 2 * 50, 30, 40, 32),
        ("scale_width_and_crop", 2 * 50, 70, 40, 32),
        ("none", 2 * 37, 30, 36, 32),
    ],
)
@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])
@pytest.mark.parametrize("input_nc", [3, 1])
def test_transform_chain_equals_pil(tmp_path, preprocess, w, h, load, crop, direction, input_nc):
    os.makedirs(tmp_path / "train")
    write_ab(tmp_path / "train" / "x.png", w + 1, h)  # odd width: split at int(width/2)
    ds = PairedDataset(
        str(tmp_path),
        "train",
        direction,
        input_nc=input_nc,
        output_nc=3,
        preprocess=preprocess,
        load_size=load,
        crop_size=crop,
        flip=True,
        seed=7,
    )
    for epoch in range(3):
        ds.set_epoch(epoch)
        item = ds[0]
        ab = Image.open(tmp_path / "train" / "x.png").convert("RGB")
        w2 = int(ab.size[0] / 2)
        a, b = ab.crop((0, 0, w2, h)), ab.crop((w2, 0, ab.size[0], h))
        if direction == "BtoA":
            a, b = b, a
        p = sample_crop_flip(preprocess, load, crop, a.size, sample_rng(7, epoch, 0))
        assert torch.equal(item["A"], pil_chain(a, preprocess, load, crop, p.x, p.y, p.flip, input_nc == 1))
        assert torch.equal(item["B"], pil_chain(b, preprocess, load, crop, p.x, p.y, p.flip, False))


def test_crop_and_flip_vary_and_are_shared_by_a_and_b(tmp_path):
    os.makedirs(tmp_path / "train")
    half = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(np.concatenate([half, half], 1)).save(tmp_path / "train" / "same.png")
    ds = PairedDataset(str(tmp_path), "train", load_size=40, crop_size=32, preprocess="crop", seed=3)
    seen = set()
    for epoch in range(20):
        ds.set_epoch(epoch)
        item = ds[0]
        assert torch.equal(item["A"], item["B"])  # same offset and flip on both halves
        seen.add(item["A"].sum().item())
    assert len(seen) > 5


def test_sample_params_follow_reference_ranges():
    rng = random.Random(0)
    draws = [sample_crop_flip("resize_and_crop", 286, 256, (600, 600), rng) for _ in range(2000)]
    assert min(d.x for d in draws) == 0 and max(d.x for d in draws) == 30
    assert 0.45 < np.mean([d.flip for d in draws]) < 0.55


def test_listing_is_recursive_sorted_and_case_insensitive(tmp_path):
    os.makedirs(tmp_path / "b" / "c")
    for name in ["z.PNG", "a.jpg", "b/c/m.JpEg", "b/n.tiff", "notes.txt", "b/c/x.gif"]:
        (tmp_path / name).write_bytes(b"")
    assert [os.path.relpath(p, tmp_path) for p in list_images(str(tmp_path))] == [
        "a.jpg",
        "b/c/m.JpEg",
        "b/n.tiff",
        "z.PNG",
    ]


def test_two_folder_layout_equals_aligned(tmp_path):
    rng = np.random.default_rng(1)
    for layout in ("aligned", "two"):
        os.makedirs(tmp_path / layout / "train" / "A", exist_ok=True)
        os.makedirs(tmp_path / layout / "train" / "B", exist_ok=True)
    for i in range(3):
        a, b = (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2))
        Image.fromarray(np.concatenate([a, b], 1)).save(tmp_path / "aligned" / "train" / f"{i}.png")
        Image.fromarray(a).save(tmp_path / "two" / "train" / "A" / f"{i}.png")
        Image.fromarray(b).save(tmp_path / "two" / "train" / "B" / f"{i}.png")
    os.rmdir(tmp_path / "aligned" / "train" / "A")
    os.rmdir(tmp_path / "aligned" / "train" / "B")
    kw = dict(load_size=36, crop_size=32, seed=5)
    aligned, two = PairedDataset(str(tmp_path / "aligned"), **kw), PairedDataset(str(tmp_path / "two"), **kw)
    assert two.two_folders and not aligned.two_folders
    for i in range(3):
        assert torch.equal(aligned[i]["A"], two[i]["A"]) and torch.equal(aligned[i]["B"], two[i]["B"])


def test_two_folder_layout_reports_unmatched_names(tmp_path):
    for side, name in (("A", "1.png"), ("B", "2.png")):
        os.makedirs(tmp_path / "train" / side)
        write_ab(tmp_path / "train" / side / name, 8, 8)
    with pytest.raises(DataError, match="unmatched: 1.png, 2.png"):
        PairedDataset(str(tmp_path))


def test_missing_dataroot_and_empty_split(tmp_path):
    with pytest.raises(DataError, match="--dataroot .*nowhere.* is not a folder"):
        PairedDataset(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="no 'train' split"):
        PairedDataset(str(tmp_path))
    os.makedirs(tmp_path / "train")
    with pytest.raises(DataError, match="holds no images"):
        PairedDataset(str(tmp_path))


def test_corrupt_image_is_named_or_skipped(tmp_path):
    os.makedirs(tmp_path / "train")
    write_ab(tmp_path / "train" / "0.png", 64, 32)
    good = (tmp_path / "train" / "0.png").read_bytes()
    (tmp_path / "train" / "1.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "train" / "2.jpg").write_bytes(b"not an image at all")
    ds = PairedDataset(str(tmp_path), load_size=32, crop_size=32)
    for i, name in ((1, "1.png"), (2, "2.jpg")):
        with pytest.raises(DataError, match=name):
            ds[i]
    ds = PairedDataset(str(tmp_path), load_size=32, crop_size=32, skip_bad_images=True)
    loader, _ = make_loader(ds, batch_size=3, shuffle=False, num_workers=0)
    with pytest.warns(UserWarning, match="skipping"):
        batches = list(loader)
    assert len(batches) == 1 and batches[0]["A"].shape == (1, 3, 32, 32)


def test_images_smaller_than_the_crop_are_reported(tmp_path):
    os.makedirs(tmp_path / "train")
    write_ab(tmp_path / "train" / "small.png", 40, 20)
    ds = PairedDataset(str(tmp_path), preprocess="crop", crop_size=32)
    with pytest.raises(DataError, match="small.png.*smaller than --crop_size 32"):
        ds[0]
    with pytest.raises(DataError, match="--load_size 30 is smaller than --crop_size 32"):
        PairedDataset(str(tmp_path), load_size=30, crop_size=32)


def test_shuffle_is_a_function_of_seed_and_epoch(tiny_data):
    ds = PairedDataset(tiny_data, load_size=32, crop_size=32)
    loader, sampler = make_loader(ds, 2, shuffle=True, num_workers=0, seed=9)
    sampler.set_position(3)
    first = sampler.order()
    sampler.set_position(3, 4)
    assert list(iter(sampler)) == first[4:]
    sampler.set_position(4)
    assert sampler.order() != first and sorted(first) == list(range(8))
