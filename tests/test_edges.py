"""`fastpix data edges`: the reference's HED post-processing on the built-in detector and on a user's TorchScript
network; the output's properties (black-on-white and binary, one pixel thin, no specks, on the photo's outlines)."""

import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_dilation
from skimage.measure import label

from fastpix import cli
from fastpix.config import EdgesConfig
from fastpix.data.edges import HED, edges_pair, make_edges_dataset, non_maximum_suppression, simple_edges
from fastpix.errors import ConfigError, DataError, MissingDependency

SIZE = 96


def shapes_photo(w=150, h=120, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A photo of a bright disc and a grey rectangle on a dark, slightly noisy background, and the mask of their
    outlines (within 1.5 px) at SIZE×SIZE."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    disc = (xx - 0.35 * w) ** 2 + (yy - 0.5 * h) ** 2 <= (0.22 * h) ** 2
    box = (np.abs(xx - 0.75 * w) <= 0.12 * w) & (np.abs(yy - 0.45 * h) <= 0.25 * h)
    grey = 40 + 170 * disc + 90 * box + np.random.default_rng(seed).normal(0, 3, (h, w))
    photo = np.clip(grey, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    photo[..., 0] = np.clip(photo[..., 0].astype(int) + 30 * disc, 0, 255)  # a red disc
    sy, sx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    px, py = (sx + 0.5) * w / SIZE, (sy + 0.5) * h / SIZE  # pixel centres in the photo's coordinates
    r = np.hypot(px - 0.35 * w, py - 0.5 * h)
    near_disc = np.abs(r - 0.22 * h) * SIZE / h <= 1.5
    dx, dy = np.abs(px - 0.75 * w) - 0.12 * w, np.abs(py - 0.45 * h) - 0.25 * h
    outside = np.hypot(np.maximum(dx, 0), np.maximum(dy, 0))
    near_box = np.where((dx <= 0) & (dy <= 0), np.minimum(-dx, -dy), outside) * SIZE / w <= 1.5
    return photo, near_disc | near_box


def edge_mask(pair: np.ndarray) -> np.ndarray:
    return pair[:, :SIZE, 0] < 128


def test_the_built_in_detector_draws_thin_black_outlines_on_white_without_specks():
    photo, outlines = shapes_photo()
    pair = edges_pair(photo, EdgesConfig(input="-", out="-", size=SIZE))
    assert pair.shape == (SIZE, 2 * SIZE, 3) and pair.dtype == np.uint8
    assert np.array_equal(pair[:, SIZE:], np.asarray(Image.fromarray(photo).resize((SIZE, SIZE), Image.BICUBIC)))
    a = pair[:, :SIZE]
    assert np.isin(a, (0, 255)).all() and (a[..., 0] == a[..., 2]).all()  # binary, grey
    edges = edge_mask(pair)
    assert 0.02 < edges.mean() < 0.15  # black on white: edges are the few
    assert not (edges[:-1, :-1] & edges[1:, :-1] & edges[:-1, 1:] & edges[1:, 1:]).any()  # thin: no 2×2 block
    sizes = np.bincount(label(edges, connectivity=2).ravel())[1:]
    assert sizes.min() >= 5  # no specks
    assert outlines[edges].mean() > 0.9  # on the outlines, not on the noise
    assert binary_dilation(edges, np.ones((3, 3), bool))[outlines].mean() > 0.9  # and all along them


def test_non_maximum_suppression_keeps_the_ridge_of_a_blurred_line():
    x = np.arange(40, dtype=np.float32)
    ridge = np.exp(-((x - 17.3) ** 2) / 8)[None, :].repeat(40, axis=0)  # a vertical line, 2σ wide
    kept = non_maximum_suppression(ridge, np.zeros_like(ridge))  # normal along x
    assert set(np.nonzero(kept[10:30])[1]) == {17}
    assert kept[0].max() == 0 and kept[:, -1].max() == 0  # the border fades out
    assert kept[2, 17] == pytest.approx(0.4 * ridge[2, 17])
    # the reference's orientation, from the map itself, finds the same ridge
    line = simple_edges(ridge, threshold=0.5, small_edge=5)
    assert set(np.nonzero(line[5:35] == 0)[1]) == {17}


def test_a_torchscript_hed_is_used_instead_and_its_output_post_processed(tmp_path):
    class FakeHED(torch.nn.Module):
        """A stand-in for HED: the red channel's horizontal steps as edge probability."""

        def forward(self, rgb):
            r = rgb[:, :1]
            step = torch.zeros_like(r)
            step[..., 1:] = (r[..., 1:] - r[..., :-1]).abs()
            return (step * 4).clamp(0, 1)

    hed = str(tmp_path / "hed.pt")
    torch.jit.script(FakeHED()).save(hed)
    photo = np.full((64, 64, 3), 30, np.uint8)
    photo[:, 32:, 0] = 220  # one vertical step, in red only
    photo[20:40, :, 1] = 200  # a horizontal band in green: the stand-in does not see it
    pair = edges_pair(photo, EdgesConfig(input="-", out="-", size=64), HED(hed, "cpu"))
    columns = set(np.nonzero(pair[8:56, :64, 0] == 0)[1])
    assert columns and columns <= {31, 32}


def test_a_hed_that_answers_the_wrong_shape_is_named(tmp_path):
    class Wrong(torch.nn.Module):
        def forward(self, rgb):
            return rgb

    torch.jit.script(Wrong()).save(str(tmp_path / "wrong.pt"))
    (tmp_path / "in").mkdir()
    Image.fromarray(shapes_photo()[0]).save(tmp_path / "in" / "a.png")
    cfg = EdgesConfig(input=str(tmp_path / "in"), out=str(tmp_path / "out"), size=32, hed=str(tmp_path / "wrong.pt"))
    with pytest.raises(DataError, match="the --hed network answered shape"):
        make_edges_dataset(cfg, progress=False)
    with pytest.raises(DataError, match="--hed .*: not a TorchScript network"):
        make_edges_dataset(EdgesConfig(input=cfg.input, out=cfg.out, hed=str(tmp_path / "in" / "a.png")))


def test_the_command_keeps_the_split_folders_and_names_unreadable_photos(tmp_path, capsys):
    for split, seed in (("train", 1), ("test", 2)):
        os.makedirs(tmp_path / "photos" / split)
        Image.fromarray(shapes_photo(seed=seed)[0]).save(tmp_path / "photos" / split / f"p{seed}.jpg", quality=95)
    (tmp_path / "photos" / "test" / "bad.png").write_bytes(b"not a photo")
    assert (
        cli.main(
            ["data", "edges", "--input", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--size", str(SIZE)]
        )
        == 1
    )
    assert sorted(
        os.path.relpath(os.path.join(d, f), tmp_path / "out") for d, _, fs in os.walk(tmp_path / "out") for f in fs
    ) == ["test/p2.png", "train/p1.png"]
    written = np.asarray(Image.open(tmp_path / "out" / "train" / "p1.png"))
    assert written.shape == (SIZE, 2 * SIZE, 3) and np.isin(written[:, :SIZE], (0, 255)).all()
    out, err = capsys.readouterr()
    assert "2 edges|photo pairs" in out and f"skipped {tmp_path}/photos/test/bad.png" in err


def test_an_output_inside_the_photos_is_refused(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(ConfigError, match="--out .* is inside --input"):
        make_edges_dataset(EdgesConfig(input=str(tmp_path / "photos"), out=str(tmp_path / "photos" / "edges")))


def test_without_scikit_image_the_pip_line_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "skimage", None)
    for name in ("skimage.filters", "skimage.measure", "skimage.morphology"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependency, match=r"pip install 'fastpix\[edges\]'"):
        make_edges_dataset(EdgesConfig(input=str(tmp_path), out=str(tmp_path / "out")))
