"""Bad inputs on every read path: decompression bombs, dangling links, splits with nothing readable, output-name
collisions in `fastpix predict`, file names that are not UTF-8 in `fastpix test`'s page."""

import io
import os
import pathlib
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from fastpix import config
from fastpix.data.cache import PairCache
from fastpix.data.dataset import DataError, PairedDataset, make_loader
from fastpix.data.decode import DecodeError, ImageTooLarge, decode_image, image_size
from fastpix.data.stream import make_pipeline
from fastpix.infer.image_files import output_names, predict_files
from fastpix.infer.predictor import Predictor
from fastpix.models import define_G
from fastpix.store.weights import save_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def png_claiming(w: int, h: int) -> bytes:
    """A 1×1 PNG whose header claims w×h: what a decompression bomb shows before its pixels are inflated."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", w, h)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


def split_of(tmp_path, n_good=2):
    from fastpix.data.demo import write_demo_dataset

    return write_demo_dataset(str(tmp_path / "data"), 32, {"train": n_good}) if n_good else str(tmp_path / "data")


# ---- the decoding facade ---------------------------------------------------------------------------------------------


def test_a_bomb_is_refused_from_its_header_naming_the_file(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(50_000, 50_000))
    for call in (
        lambda: decode_image(str(bomb)),
        lambda: image_size(str(bomb)),
        lambda: decode_image(bomb.read_bytes(), name="the upload"),
    ):
        with pytest.raises(ImageTooLarge, match=r"(bomb\.png|the upload).*(50000x50000|2500000000)"):
            call()
    assert image_size(png_claiming(7, 3)) == (7, 3)  # the header alone: its pixel data is 1×1
    with pytest.raises(ImageTooLarge, match="7x3"):
        decode_image(png_claiming(7, 3), max_pixels=20)
    assert issubclass(ImageTooLarge, DecodeError) and issubclass(DecodeError, DataError)


def test_every_decode_error_names_the_file(tmp_path):
    missing, garbage = str(tmp_path / "gone.png"), tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    os.symlink(missing, tmp_path / "link.png")
    for path in (missing, str(garbage), str(tmp_path / "link.png")):
        with pytest.raises(DecodeError, match=os.path.basename(path)):
            decode_image(path)
        with pytest.raises(DecodeError, match=os.path.basename(path)):
            image_size(path)


# ---- data sets -------------------------------------------------------------------------------------------------------


def test_a_bomb_in_a_split_is_named_or_skipped_on_every_pipeline(tmp_path):
    root = split_of(tmp_path)
    (tmp_path / "data" / "train" / "9_bomb.png").write_bytes(png_claiming(40_000, 40_000))
    ds = PairedDataset(root, load_size=32, crop_size=32)
    with pytest.raises(DataError, match="9_bomb.png"):
        ds[2]
    ds = PairedDataset(root, load_size=32, crop_size=32, skip_bad_images=True)
    loader, _ = make_loader(ds, batch_size=3, shuffle=False, num_workers=0)
    with pytest.warns(UserWarning, match="9_bomb.png"):
        batches = list(loader)
    assert [b["A"].shape[0] for b in batches] == [2]
    with pytest.warns(UserWarning, match="9_bomb.png"):
        cache = PairCache(ds, cache_dir=str(tmp_path / "c"), progress=False)
    assert cache.bad == {2}


def test_a_dangling_link_is_named_or_skipped_on_the_default_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # should the default cache move to the user's cache
    root = split_of(tmp_path)
    os.symlink(str(tmp_path / "nowhere.png"), tmp_path / "data" / "train" / "9_link.png")
    with pytest.raises(DataError, match="9_link.png"):
        PairCache(PairedDataset(root, load_size=32, crop_size=32), progress=False)  # cache_dir: the default
    with pytest.warns(UserWarning, match="9_link.png"):
        cache = PairCache(PairedDataset(root, load_size=32, crop_size=32, skip_bad_images=True), progress=False)
    assert cache.bad == {2}


@pytest.mark.parametrize("mode", ["cache", "stream", "loader"])
def test_a_split_with_no_readable_image_is_an_error_naming_it(tmp_path, mode):
    split = tmp_path / "data" / "train"
    split.mkdir(parents=True)
    (split / "a.png").write_bytes(b"not an image")
    (split / "b.png").write_bytes(png_claiming(30_000, 30_000))
    ds = PairedDataset(str(tmp_path / "data"), load_size=32, crop_size=32, skip_bad_images=True)
    with warnings.catch_warnings(), pytest.raises(DataError, match=f"{split}: none of its 2 images"):
        warnings.simplefilter("ignore")  # the skip warnings, raised in the loader's worker process or here
        pipeline = make_pipeline(ds, 2, mode=mode, cache_dir=str(tmp_path / "c"), progress=False, num_threads=1)
        list(pipeline)


def test_fastpix_test_names_a_bomb_skips_it_and_writes_non_utf8_names(tmp_path):
    from fastpix.evaluate import run_test

    root = split_of(tmp_path, 0)
    split = os.path.join(os.fsencode(root), b"test")
    os.makedirs(split)
    ab = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    Image.fromarray(ab).save(os.path.join(split, b"caf\xe9.png"))  # Latin-1 bytes: not UTF-8
    with open(os.path.join(split, b"z_bomb.png"), "wb") as f:
        f.write(png_claiming(40_000, 40_000))
    torch.manual_seed(0)
    G = define_G(3, 3, 4, "unet_32", "batch", True, backend="eager")
    run = tmp_path / "checkpoints" / "r"
    run.mkdir(parents=True)
    weights = str(run / "latest_net_G.safetensors")
    save_weights(weights, G)
    model = config.ModelConfig(netG="unet_32", ngf=4)
    test = config.TestConfig(
        checkpoints_dir=str(tmp_path / "checkpoints"), name="r", results_dir=str(tmp_path / "res"), device="cpu"
    )
    with pytest.raises(DataError, match="z_bomb.png"):
        run_test(model, config.DataConfig(dataroot=root, crop_size=32), test, weights)
    with pytest.warns(UserWarning, match="z_bomb.png"):
        out = run_test(model, config.DataConfig(dataroot=root, crop_size=32, skip_bad_images=True), test, weights)
    page = pathlib.Path(out, "index.html").read_text(encoding="utf-8")
    assert "caf\ufffd" in page and "images/caf%E9_fake_B.png" in page
    assert os.path.isfile(os.path.join(os.fsencode(out), b"images", b"caf\xe9_fake_B.png"))
    assert os.path.isfile(os.path.join(out, "scores.json"))


# ---- fastpix predict -------------------------------------------------------------------------------------------------


def test_output_names_never_collide():
    assert output_names(["a.jpg", "a.png", "a_2.jpg"]) == ["a.png", "a_3.png", "a_2.png"]
    assert output_names(["x/a.jpg", "x/a.png", "b.png"]) == ["x/a.png", "x/a_2.png", "b.png"]
    names = output_names(["a.png", "a.jpg", "a_2.png", "a_2.jpg", "a_3.bmp", "a.tif"])
    assert len(set(names)) == 6 and names[:1] == ["a.png"] and names[2] == "a_2.png" and names[4] == "a_3.png"


def test_predict_files_writes_one_file_per_input(tmp_path):
    torch.manual_seed(0)
    predictor = Predictor(define_G(3, 3, 4, "unet_32", "batch", False, backend="eager"), norm_mode="running")
    rng = np.random.default_rng(1)
    paths = []
    for name in ("a.jpg", "a.png", "a_2.jpg"):
        paths.append(str(tmp_path / name))
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(paths[-1])
    written, failed = predict_files(predictor, paths, str(tmp_path / "out"), progress=False)
    assert (
        not failed
        and len(set(written)) == 3
        and sorted(os.listdir(tmp_path / "out")) == sorted(os.path.basename(p) for p in written)
    )
    for path, target in zip(paths, written):
        expected = predictor(decode_image(path), output_type="np")
        assert np.array_equal(np.asarray(Image.open(target)), expected), target
