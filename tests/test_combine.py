"""`fastpix data combine` (the reference's combine_A_and_B.py without its silent losses) and `fastpix data
cityscapes` (its prepare_cityscapes_dataset.py) on small synthetic folders."""

import os

import numpy as np
import pytest
from PIL import Image

from fastpix import cli
from fastpix.config import CityscapesConfig
from fastpix.data.cityscapes import prepare_cityscapes
from fastpix.errors import DataError


def image(path, w, h, seed):
    """A smooth image (JPEG keeps it closely), different for each seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.clip(rng.integers(0, 128, 3) + rng.integers(1, 6, 3) * xx[..., None] + 2 * yy[..., None], 0, 255)
    pixels = pixels.astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def read(path):
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture
def folders(tmp_path):
    """A/ and B/ with train/ and val/: one good PNG pair, one good JPEG pair, a missing B, a size mismatch, a B
    without an A and an unreadable A."""
    a, b = tmp_path / "A", tmp_path / "B"
    pixels = {
        "1a": image(f"{a}/train/1.png", 16, 12, 1),
        "1b": image(f"{b}/train/1.png", 16, 12, 2),
        "3a": image(f"{a}/train/3.png", 16, 12, 3),
        "3b": image(f"{b}/train/3.png", 20, 10, 4),
        "4a": image(f"{a}/val/4.jpg", 16, 16, 5),
        "4b": image(f"{b}/val/4.jpg", 16, 16, 6),
    }
    image(f"{a}/train/2.png", 16, 12, 7)
    image(f"{b}/train/5.png", 16, 12, 8)
    (a / "val" / "6.png").write_bytes(b"not an image")
    (b / "val" / "6.png").write_bytes(b"not an image either")
    return tmp_path, pixels


def status(argv) -> int:
    """The exit status of `fastpix ARGV`: main's return value, or the code of the SystemExit it raises."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


def combine(tmp_path, *flags):
    return status(
        [
            "data",
            "combine",
            "--fold_A",
            str(tmp_path / "A"),
            "--fold_B",
            str(tmp_path / "B"),
            "--fold_AB",
            str(tmp_path / "AB"),
            *flags,
        ]
    )


def test_pairs_are_written_side_by_side_and_every_pair_left_out_is_named(folders, capsys):
    tmp_path, px = folders
    assert combine(tmp_path) == 1
    assert np.array_equal(read(tmp_path / "AB/train/1.png"), np.concatenate([px["1a"], px["1b"]], axis=1))
    jpeg = read(tmp_path / "AB/val/4.jpg").astype(int)
    assert jpeg.shape == (16, 32, 3)
    decoded = np.concatenate([read(tmp_path / "A/val/4.jpg"), read(tmp_path / "B/val/4.jpg")], axis=1)
    assert np.abs(jpeg - decoded).mean() < 2  # written again at quality 95
    assert sorted(os.listdir(tmp_path / "AB/train")) == ["1.png"]
    out, err = capsys.readouterr()
    assert out == f"fastpix data combine: 2 pairs written to {tmp_path}/AB (train 1, val 1)\n"
    lines = err.splitlines()
    assert lines[0] == "fastpix data combine: 4 left out:"
    assert lines[1] == f"  train/2.png: no image {tmp_path}/B/train/2.png (its partner in --fold_B)"
    assert lines[2].startswith("  train/3.png: sizes differ: A 16×12, B 20×10 (--resize")
    assert lines[3] == f"  train/5.png: only in --fold_B: no {tmp_path}/A/train/5.png"
    assert lines[4].startswith("  val/6.png: unreadable: ") and len(lines) == 5


def test_resize_makes_b_the_size_of_a(folders, capsys):
    tmp_path, px = folders
    assert combine(tmp_path, "--resize") == 1  # the missing partner and the unreadable pair are still left out
    resized = np.asarray(Image.fromarray(px["3b"]).resize((16, 12), Image.Resampling.BICUBIC))
    assert np.array_equal(read(tmp_path / "AB/train/3.png"), np.concatenate([px["3a"], resized], axis=1))
    assert "B resized to A's size in 1" in capsys.readouterr().out


def test_one_worker_writes_the_same_files(folders):
    tmp_path, _ = folders
    combine(tmp_path)
    first = {p: (tmp_path / "AB" / p).read_bytes() for p in ("train/1.png", "val/4.jpg")}
    combine(tmp_path, "--no_multiprocessing")
    assert {p: (tmp_path / "AB" / p).read_bytes() for p in first} == first


def test_use_ab_and_num_imgs_follow_the_reference(tmp_path, capsys):
    x_a, x_b = image(f"{tmp_path}/AB_in/train/x_A.png", 8, 8, 1), image(f"{tmp_path}/AB_in/train/x_B.png", 8, 8, 2)
    image(f"{tmp_path}/AB_in/train/y_A.png", 8, 8, 3)
    image(f"{tmp_path}/AB_in/train/z_A.png", 8, 8, 4)
    image(f"{tmp_path}/AB_in/train/z_B.png", 8, 8, 5)
    folder = str(tmp_path / "AB_in")
    code = status(
        [
            "data",
            "combine",
            "--fold_A",
            folder,
            "--fold_B",
            folder,
            "--fold_AB",
            str(tmp_path / "out"),
            "--use_AB",
            "--num_imgs",
            "2",
        ]
    )
    assert code == 1  # y_A.png has no y_B.png
    assert sorted(os.listdir(tmp_path / "out/train")) == ["x.png"]  # z is the third by name: beyond --num_imgs 2
    assert np.array_equal(read(tmp_path / "out/train/x.png"), np.concatenate([x_a, x_b], axis=1))
    assert f"train/y_A.png: no image {folder}/train/y_B.png" in capsys.readouterr().err


def test_an_output_inside_an_input_is_refused(folders, capsys):
    tmp_path, _ = folders
    assert (
        status(
            [
                "data",
                "combine",
                "--fold_A",
                str(tmp_path / "A"),
                "--fold_B",
                str(tmp_path / "B"),
                "--fold_AB",
                str(tmp_path / "A"),
            ]
        )
        == 2
    )
    assert f"--fold_AB {tmp_path}/A is inside --fold_A {tmp_path}/A" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "A" / "train")) == ["1.png", "2.png", "3.png"]


def test_a_fold_a_without_splits_says_how_to_lay_it_out(tmp_path, capsys):
    image(f"{tmp_path}/A/1.png", 8, 8, 1)
    (tmp_path / "B").mkdir()
    assert combine(tmp_path) == 2
    assert "has no split folders: put the A images in" in capsys.readouterr().err


def cityscapes_zips(root, ids: dict[str, list[str]]):
    """gtFine/ and leftImg8bit/ as the official zips unpack, for {split: [<city>_<seq>_<frame>, ...]}; the label maps
    RGBA as the official *_gtFine_color.png are, beside the other gtFine files that must be ignored."""
    pixels = {}
    for split, names in ids.items():
        for k, name in enumerate(names):
            city = name.split("_")[0]
            photo = image(f"{root}/leftImg8bit/{split}/{city}/{name}_leftImg8bit.png", 40, 20, k + 10 * len(split))
            labels = np.zeros((20, 40, 4), np.uint8)
            labels[..., 3] = 255
            labels[:, :20, :3] = (128, 64, 128)  # road
            labels[:, 20:, :3] = (70, 70, 70)  # building
            os.makedirs(f"{root}/gtFine/{split}/{city}", exist_ok=True)
            Image.fromarray(labels, "RGBA").save(f"{root}/gtFine/{split}/{city}/{name}_gtFine_color.png")
            Image.fromarray(labels[..., 0]).save(f"{root}/gtFine/{split}/{city}/{name}_gtFine_labelIds.png")
            pixels[(split, name)] = photo, labels[..., :3]
    return pixels


def test_cityscapes_is_prepared_as_the_reference_does(tmp_path):
    ids = {
        "train": ["aachen_000001_000019", "aachen_000000_000019", "bochum_000000_000313"],
        "val": ["frankfurt_000000_000294"],
    }
    pixels = cityscapes_zips(tmp_path, ids)
    cfg = CityscapesConfig(
        gtFine=str(tmp_path / "gtFine"), leftImg8bit=str(tmp_path / "leftImg8bit"), out=str(tmp_path / "out"), size=16
    )
    assert prepare_cityscapes(cfg, progress=False).written == {"test": 1, "train": 3}
    assert sorted(os.listdir(tmp_path / "out")) == ["test", "train"]
    for written, split in (("train", "train"), ("test", "val")):
        for i, name in enumerate(sorted(ids[split])):  # numbered in the order of the sorted paths
            photo, labels = pixels[(split, name)]
            expected = [
                np.asarray(Image.fromarray(x).resize((16, 16), Image.Resampling.BICUBIC)) for x in (photo, labels)
            ]
            got = read(tmp_path / "out" / written / f"{i}.jpg").astype(int)
            assert got.shape == (16, 32, 3)
            assert np.abs(got - np.concatenate(expected, axis=1)).mean() < 6  # JPEG q100, no subsampling


def test_cityscapes_refuses_unmatched_folders_in_one_line(tmp_path):
    cityscapes_zips(tmp_path, {"train": ["aachen_000000_000019"], "val": ["lindau_000000_000019"]})
    os.remove(tmp_path / "gtFine/val/lindau/lindau_000000_000019_gtFine_color.png")
    cfg = CityscapesConfig(
        gtFine=str(tmp_path / "gtFine"), leftImg8bit=str(tmp_path / "leftImg8bit"), out=str(tmp_path / "out")
    )
    with pytest.raises(
        DataError,
        match=r"val: 0 label maps and 1 photos, 1 without a partner: .*lindau_000000_000019"
        r"_leftImg8bit.png has no lindau_000000_000019_gtFine_color.png",
    ):
        prepare_cityscapes(cfg, progress=False)
    with pytest.raises(DataError, match="--gtFine: no folder"):
        prepare_cityscapes(
            CityscapesConfig(gtFine=str(tmp_path / "nope"), leftImg8bit=cfg.leftImg8bit, out=cfg.out), progress=False
        )
