"""Only regular files are read as images (issue 26 item 3): a FIFO named like an image blocks whoever opens it until
a writer comes, so the decoding facade and the folder listing name it and never open it."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fastpix.data.dataset import PairedDataset, list_images
from fastpix.data.decode import DecodeError, decode_image, decode_pair, decode_pairs_into, image_size
from fastpix.models import define_G


@pytest.fixture
def fifo(tmp_path):
    """<tmp>/images/b.png, a FIFO, beside a.png and c.png (32×16 A|B images); yields (folder, fifo path, opened),
    where opened() says whether anything opened the FIFO for reading. A watcher opens it for writing as soon as a
    reader does, so that a regression fails the test instead of hanging it."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "c.png"):
        Image.fromarray(np.full((16, 32, 3), 100, np.uint8)).save(folder / name)
    path = str(folder / "b.png")
    os.mkfifo(path)
    seen, stop = threading.Event(), threading.Event()

    def watch():
        while not stop.is_set():
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # succeeds only while a reader has it open
                seen.set()
            except OSError:
                time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    yield str(folder), path, seen.is_set
    stop.set()
    watcher.join(5)


def test_the_decoding_facade_refuses_a_fifo_by_name_without_opening_it(fifo):
    folder, path, opened = fifo
    for read in (decode_image, decode_pair, image_size):
        with pytest.raises(DecodeError, match=f"^{path}: a FIFO, not a regular file: not read$"):
            read(path)
    a, b = np.ones((3, 8, 8, 3), np.uint8), np.ones((3, 8, 8, 3), np.uint8)
    paths = [os.path.join(folder, n) for n in ("a.png", "b.png", "c.png")]
    errors = decode_pairs_into(paths, a, b, (8, 8))
    assert errors == [None, f"{path}: a FIFO, not a regular file: not read", None]
    assert a[1].max() == 0 and a[0].min() == 100 and a[2].min() == 100
    assert not opened()


def test_data_set_listings_name_and_skip_it(fifo):
    folder, path, opened = fifo
    with pytest.warns(UserWarning, match=f"{path}: a FIFO, not a regular file: skipped"):
        assert list_images(folder) == [os.path.join(folder, "a.png"), os.path.join(folder, "c.png")]
    os.symlink("missing.png", os.path.join(folder, "dangling.png"))  # still listed: the decoder names it
    with pytest.warns(UserWarning):
        assert os.path.join(folder, "dangling.png") in list_images(folder)
    root = os.path.dirname(folder)
    os.rename(folder, os.path.join(root, "train"))
    with pytest.warns(UserWarning, match="a FIFO"):
        assert len(PairedDataset(root, "train", load_size=16, crop_size=16)) == 3
    assert not opened()


def test_predict_names_a_fifo_and_finishes(fifo, tmp_path):
    folder, path, opened = fifo
    torch.save(define_G(3, 3, 8, "unet_32", "batch", True).state_dict(), tmp_path / "g.pth")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastpix",
            "predict",
            "--checkpoint",
            str(tmp_path / "g.pth"),
            "--input",
            folder,
            path,
            "--output",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--runtime",
            "eager",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 1, done.stderr  # the FIFO given by name is a file that could not be translated
    assert f"{path}: a FIFO, not a regular file: skipped" in done.stderr  # in the folder: left out of the listing
    assert f"fastpix predict: skipped {path}: a FIFO, not a regular file: not read" in done.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "c.png"]
    assert not opened()
