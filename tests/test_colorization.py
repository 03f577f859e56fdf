"""Colorization as the reference's (--model colorization): Lab equal to scikit-image's, the data set equal to the
reference's chain, the fast data paths equal to it, the flags, a run end to end (train → test → eval → predict →
serve), and the Predictor keeping the input's lightness."""

import io
import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import perturb_batchnorms

from fastpix.cli import main
from fastpix.config import DataConfig, ModelConfig, StudyConfig, check_model, model_kind
from fastpix.data import ColorizationDataset
from fastpix.data.lab import colorization_pair, colorization_rgb, lab_to_rgb, rgb_to_lab, to_uint8
from fastpix.data.pictures import pictures
from fastpix.data.stream import make_pipeline
from fastpix.data.transforms import sample_crop_flip, sample_rng
from fastpix.errors import ConfigError
from fastpix.infer.predictor import Predictor
from fastpix.models import define_G
from fastpix.study.page import make_study

color = pytest.importorskip("skimage.color", reason="the Lab tests compare with scikit-image (the 'test' extra)")

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--netG", "unet_32", "--ngf", "4", "--ndf", "4", "--load_size", "36", "--crop_size", "32"]


def photo(rng, w, h) -> np.ndarray:
    """A smooth colourful HWC uint8 image with a few hard edges: what a photo has that Lab must keep."""
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    f = rng.uniform(2, 9, 3)
    phase = rng.uniform(0, 6.3, 3)
    rgb = [127.5 + 127.5 * np.sin(f[c] * (xx * np.cos(c) + yy * np.sin(c + 1)) + phase[c]) for c in range(3)]
    img = np.stack(rgb, -1)
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    img[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.integers(0, 256, 3)
    return img.clip(0, 255).astype(np.uint8)


def write_photos(root, counts: dict, size=(40, 40)) -> str:
    """Single images per split: PNGs, a JPEG, a grey PNG and one in a sub-folder (the listing is recursive)."""
    rng = np.random.default_rng(7)
    for split, n in counts.items():
        os.makedirs(os.path.join(root, split, "more"), exist_ok=True)
        for i in range(n):
            image = Image.fromarray(photo(rng, *size))
            if i == 1:
                image.save(os.path.join(root, split, f"p{i}.jpg"), quality=90)
            elif i == 2:
                image.convert("L").save(os.path.join(root, split, f"p{i}.png"))
            elif i == 3:
                image.save(os.path.join(root, split, "more", f"p{i}.png"))
            else:
                image.save(os.path.join(root, split, f"p{i}.png"))
    return str(root)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("photos"), {"train": 6, "test": 4})


def sk_lab2rgb(lab):
    with warnings.catch_warnings():  # scikit-image warns when it clips a negative Z, which the tests want
        warnings.simplefilter("ignore")
        return color.lab2rgb(lab)


def chw(hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(hwc)).permute(2, 0, 1)


def hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


# ---- CIE Lab against scikit-image ------------------------------------------------------------------------------------


def colour_grid(step=5) -> np.ndarray:
    """Every step-th level of each channel, the gamut's corners included, as a (1, N, 3) uint8 image."""
    levels = np.unique(np.r_[np.arange(0, 256, step), 255])
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(1, -1, 3)
    return grid.astype(np.uint8)


def test_rgb_to_lab_equals_scikit_images_rgb2lab_on_the_whole_gamut():
    grid = colour_grid()
    ours = hwc(rgb_to_lab(chw(grid)))
    reference = color.rgb2lab(grid)
    assert np.abs(ours - reference).max() < 1e-9
    float_input = hwc(rgb_to_lab(chw(grid).double() / 255))  # floats in [0, 1] are read as skimage reads them
    assert np.abs(float_input - reference).max() < 1e-9
    corners = color.rgb2lab(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8))
    assert np.abs(hwc(rgb_to_lab(chw(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)))) - corners).max() < 1e-9


def test_lab_to_rgb_equals_scikit_images_lab2rgb_inside_and_outside_the_gamut():
    rng = np.random.default_rng(0)
    lab = np.stack([rng.uniform(0, 100, 4000), rng.uniform(-128, 127, 4000), rng.uniform(-128, 127, 4000)], -1)
    # the edges: black, white, the extremes of a and b at every lightness (a negative Z where b is large)
    edges = [
        [L, a, b]
        for L in (0.0, 0.5, 8.0, 50.0, 99.5, 100.0)
        for a in (-128.0, 0.0, 127.0)
        for b in (-128.0, 0.0, 127.0)
    ]
    lab = np.concatenate([lab, edges])[None]
    ours = hwc(lab_to_rgb(chw(lab)))
    reference = sk_lab2rgb(lab)
    assert np.abs(ours - reference).max() < 1e-9
    outside = (reference == 0) | (reference == 1)
    assert outside.any(-1).mean() > 0.3  # the comparison did cover clipped colours


def test_round_trips_through_lab_give_the_colours_back():
    """As closely as scikit-image's own: its thresholds (0.008856 one way, 0.2068966 the other) do not quite meet,
    which moves a few dark colours by ~1.5e-4 of a level on the way back."""
    grid = colour_grid(3)
    back = hwc(lab_to_rgb(rgb_to_lab(chw(grid))))
    assert np.abs(back * 255 - grid).max() < 2e-4
    assert np.abs(back - sk_lab2rgb(color.rgb2lab(grid))).max() < 1e-9
    lab = color.rgb2lab(grid)
    assert np.abs(hwc(rgb_to_lab(lab_to_rgb(chw(lab)))) - lab).max() < 2e-4


def reference_item(rgb: np.ndarray):
    """The reference's ColorizationDataset.__getitem__ after its transform: rgb2lab, float32, ToTensor, scaling."""
    lab = torch.from_numpy(color.rgb2lab(rgb).astype(np.float32)).permute(2, 0, 1)
    return lab[[0], ...] / 50.0 - 1.0, lab[[1, 2], ...] / 110.0


def reference_visual(A: torch.Tensor, B: torch.Tensor) -> np.ndarray:
    """The reference's ColorizationModel.lab2rgb then tensor2im: lab2rgb(L, ab)·255 cast to uint8."""
    lab = torch.cat([(A[None] + 1.0) * 50.0, B[None] * 110.0], dim=1)[0].float().numpy()
    return (sk_lab2rgb(np.transpose(lab.astype(np.float64), (1, 2, 0))) * 255).astype(np.uint8)


def test_the_colorization_encoding_and_pictures_equal_the_references_arithmetic():
    grid = colour_grid(4)
    A, B = colorization_pair(chw(grid))
    ref_A, ref_B = reference_item(grid)
    assert A.dtype == B.dtype == torch.float32 and A.shape[0] == 1 and B.shape[0] == 2
    assert torch.allclose(A, ref_A, rtol=0, atol=1e-6) and torch.allclose(B, ref_B, rtol=0, atol=1e-6)
    assert (ref_A != A).float().mean() < 1e-3 and (ref_B != B).float().mean() < 1e-3  # float64 rounding only
    fake = (B + 0.3 * torch.randn(B.shape)).clamp(-1, 1)  # a prediction, outside the gamut in places
    for ab in (B, fake):
        ours = hwc(to_uint8(colorization_rgb(A, ab)))
        diff = np.abs(ours.astype(int) - reference_visual(ref_A, ab))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert np.abs(hwc(to_uint8(colorization_rgb(A, B))).astype(int) - grid).max() <= 1  # the colours come back
    shown = pictures(A, fake, B, "colorization")
    assert list(shown) == ["real_A", "real_B_rgb", "fake_B_rgb"]
    assert (shown["real_A"][..., 0] == shown["real_A"][..., 2]).all()  # L as grey


# ---- the data set and the fast data paths ----------------------------------------------------------------------------


def test_items_equal_the_references_chain(photos):
    """PIL convert('RGB'), resize to load_size² bicubic, the crop and flip, then rgb2lab and the scaling."""
    dataset = ColorizationDataset(photos, "train", load_size=36, crop_size=32, seed=3)
    assert len(dataset) == 6 and any(os.sep + "more" + os.sep in p for p, _ in dataset.paths)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            item = dataset[index]
            image = Image.open(item["A_paths"]).convert("RGB").resize((36, 36), Image.Resampling.BICUBIC)
            draw = sample_crop_flip("resize_and_crop", 36, 32, image.size, sample_rng(3, epoch, index))
            image = image.crop((draw.x, draw.y, draw.x + 32, draw.y + 32))
            if draw.flip:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            ref_A, ref_B = reference_item(np.asarray(image))
            assert torch.allclose(item["A"], ref_A, rtol=0, atol=1e-6)
            assert torch.allclose(item["B"], ref_B, rtol=0, atol=1e-6)
            assert item["B_paths"] == item["A_paths"]


@pytest.mark.parametrize("mode", ["cache", "stream"])
def test_the_cache_and_the_stream_give_the_loaders_batches(photos, tmp_path, mode):
    dataset = ColorizationDataset(photos, "train", load_size=36, crop_size=32, seed=1)
    loader = make_pipeline(dataset, 4, seed=1, mode="loader", num_threads=0, progress=False)
    fast = make_pipeline(dataset, 4, seed=1, mode=mode, num_threads=2, cache_dir=str(tmp_path), progress=False)
    assert fast.mode == mode
    for epoch in (1, 2):
        loader.set_position(epoch)
        expected = list(loader)
        fast.set_position(epoch)
        got = list(fast)
        assert len(got) == len(expected) == 2
        for g, e in zip(got, expected):
            assert g["A_paths"] == e["A_paths"]
            assert g["A"].shape == e["A"].shape and g["B"].shape == e["B"].shape
            assert torch.equal(g["A"], e["A"]) and torch.equal(g["B"], e["B"])  # the same arithmetic on the CPU


# ---- the flags -------------------------------------------------------------------------------------------------------


def test_model_kind_follows_either_flag_and_a_reference_pths_shapes():
    assert model_kind({"model": "colorization"}) == "colorization"
    assert model_kind({"model": "pix2pix"}, {"dataset_mode": "colorization"}) == "colorization"
    assert model_kind({"input_nc": 1, "output_nc": 2}) == "colorization"  # a reference .pth says no more
    assert model_kind({"input_nc": 1, "output_nc": 2}, {"model": "pix2pix"}) == "pix2pix"
    assert model_kind({"input_nc": 1, "output_nc": 3}) == "pix2pix"
    with pytest.raises(ConfigError, match="--input_nc 3"):
        check_model(ModelConfig(model="colorization"), DataConfig(dataset_mode="colorization"))
    with pytest.raises(ConfigError, match="--output_nc 2"):
        check_model(ModelConfig(input_nc=1, output_nc=2, model="pix2pix"), DataConfig())
    check_model(ModelConfig(model="colorization", input_nc=1, output_nc=2), DataConfig(dataset_mode="colorization"))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model", "colorization", "--input_nc", "3"], "--input_nc 3 do not fit"),
        (["--dataset_mode", "colorization", "--direction", "BtoA"], "--direction BtoA do not fit"),
        (["--model", "colorization", "--dataset_mode", "aligned"], "--dataset_mode aligned"),
    ],
)
def test_contradicting_flags_are_refused_in_one_line_before_any_work(photos, workdir, capsys, flags, message):
    assert main(["train", "--dataroot", photos, "--name", "c", "--quiet", *TINY, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(workdir / "checkpoints" / "c" / "config.json")


# ---- a run end to end ------------------------------------------------------------------------------------------------


def test_train_test_eval_predict_serve_a_colorization_run(photos, workdir, capsys):
    """`--dataset_mode colorization` alone (the reference's other spelling) makes a colorization run; config.json
    records it, so test, eval, predict and serve need no flag."""
    argv = [
        "train",
        "--dataroot",
        photos,
        "--name",
        "color",
        "--dataset_mode",
        "colorization",
        "--batch_size",
        "2",
        "--max_iters",
        "4",
        "--display_freq",
        "2",
        "--gpu_ids",
        "-1",
        "--num_threads",
        "1",
        "--quiet",
        *TINY,
    ]
    assert main(argv) == 0
    run = workdir / "checkpoints" / "color"
    saved = json.loads((run / "config.json").read_text())
    assert (saved["model"]["model"], saved["data"]["dataset_mode"]) == ("colorization", "colorization")
    assert (saved["model"]["input_nc"], saved["model"]["output_nc"]) == (1, 2)
    grid = np.asarray(Image.open(run / "samples" / "iter_0000002.png"))
    body = grid[-2 * 32 :]  # under the column labels' strip
    assert grid.shape[1:] == (3 * 32, 3) and (body[:, :32, 0] == body[:, :32, 1]).all()  # L | real | fake

    assert main(["test", "--name", "color"]) == 0
    out = workdir / "results" / "color" / "test_latest"
    html = (out / "index.html").read_text()
    assert sorted(os.listdir(out / "images")) == sorted(
        f"p{i}_{k}.png" for i in range(4) for k in ("real_A", "real_B_rgb", "fake_B_rgb")
    )
    order = [html.index(f"images/p0_{k}.png") for k in ("real_A", "real_B_rgb", "fake_B_rgb")]
    assert order == sorted(order)  # the reference's visual order
    original = Image.open(os.path.join(photos, "test", "p0.png")).convert("RGB")
    resized = np.asarray(original.resize((32, 32), Image.Resampling.BICUBIC)).astype(int)
    assert np.abs(np.asarray(Image.open(out / "images" / "p0_real_B_rgb.png")).astype(int) - resized).max() <= 1
    grey = np.asarray(Image.open(out / "images" / "p2_real_B_rgb.png")).astype(int)  # the grey photo stays grey
    assert np.abs(grey[..., 0] - grey[..., 2]).max() <= 1
    scores = json.loads((out / "scores.json").read_text())

    assert main(["eval", "--results", str(out), "--baselines"]) == 0
    report = capsys.readouterr().out
    assert f"{scores['metrics']['l1']['mean']:.4f}" in report and "output = input" in report
    study = make_study([str(out)], str(workdir / "study"), StudyConfig())  # the perceptual study sees the RGB
    assert sorted(study["models"][0]["stems"]) == ["p0", "p1", "p2", "p3"]
    for shown, saved in (("fake_B", "fake_B_rgb"), ("real_B", "real_B_rgb")):
        assert (workdir / "study" / "images" / "m0" / f"p0_{shown}.png").read_bytes() == (
            out / "images" / f"p0_{saved}.png"
        ).read_bytes()

    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(run),
                "--input",
                os.path.join(photos, "test"),
                "--output",
                str(workdir / "pred"),
                "--quiet",
            ]
        )
        == 0
    )
    assert "colorization" in capsys.readouterr().out
    predicted = Image.open(workdir / "pred" / "p0.png")
    assert predicted.mode == "RGB" and predicted.size == original.size

    pytest.importorskip("fastapi", reason="serving needs the 'serve' extra")
    from test_server import request, translate, wait_until

    from fastpix.config import ServeConfig
    from fastpix.infer.server import BackgroundServer, create_app

    predictor = Predictor.from_checkpoint(str(run), device="cpu")
    assert predictor.model == "colorization" and predictor.image_channels == 3
    grey_bytes = io.BytesIO()
    original.convert("L").save(grey_bytes, format="PNG")
    with BackgroundServer(create_app(predictor, ServeConfig(graph_size=0))) as server:
        wait_until(lambda: request(f"{server.url}/readyz")[0] == 200, "readiness")
        assert json.loads(request(f"{server.url}/readyz")[2])["model"] == "colorization"
        status, headers, body = translate(server, grey_bytes.getvalue())
    assert status == 200 and headers["Content-Type"] == "image/png"
    answer = Image.open(io.BytesIO(body))
    assert answer.mode == "RGB" and answer.size == original.size
    expected = predictor(original.convert("L"), output_type="np")
    assert np.abs(np.asarray(answer).astype(int) - expected).max() <= 1


def test_a_reference_colorization_pth_is_recognised_by_its_shapes(photos, workdir):
    torch.manual_seed(0)
    G = define_G(1, 2, 4, "unet_32", "batch", True, backend="eager")
    os.makedirs(workdir / "ref")
    weights = str(workdir / "ref" / "latest_net_G.pth")
    torch.save(G.state_dict(), weights)
    argv = ["test", "--checkpoint", weights, "--dataroot", photos, "--num_test", "2"]
    assert main(argv) == 2  # the size of the images (whole, not halves: 40², which unet_32 does not take) is read
    assert main([*argv, "--crop_size", "32"]) == 0
    images = os.listdir(workdir / "results" / "ref" / "test_latest" / "images")
    kinds = ("real_A", "real_B_rgb", "fake_B_rgb")
    assert sorted(images) == sorted(f"{s}_{k}.png" for s in ("p0", "p3") for k in kinds)
    assert Predictor.from_checkpoint(weights, device="cpu").model == "colorization"


# ---- the Predictor keeps the input's lightness ---------------------------------------------------------------------


def colour_generator(chroma_gain: float):
    """A 1 → 2 generator whose predicted ab is scaled by chroma_gain (its last conv), so that a test chooses how
    much of the prediction leaves the sRGB gamut."""
    torch.manual_seed(0)
    G = perturb_batchnorms(define_G(1, 2, 8, "unet_32", "batch", False, backend="eager"))
    with torch.no_grad():
        G.model.model[3].weight.mul_(chroma_gain)
    return G


def in_gamut(L: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """Where (L, ab) is a colour sRGB holds: linear RGB in [0, 1] before lab2rgb's clipping."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xyz = color.lab2xyz(np.concatenate([L[..., None], ab], -1))
    linear = xyz @ np.linalg.inv(color.colorconv.xyz_from_rgb).T
    return ((linear >= 0) & (linear <= 1)).all(-1)


@pytest.mark.parametrize("chroma_gain, least_inside", [(1.0, 0.9), (30.0, 0.05)])
def test_the_output_keeps_the_inputs_lightness_where_the_gamut_allows(chroma_gain, least_inside):
    G = colour_generator(chroma_gain)
    predictor = Predictor(G, device="cpu")
    raw = Predictor(G, device="cpu", model="pix2pix")  # the network's own ab, to know where the gamut ends
    image = photo(np.random.default_rng(3), 70, 45)  # pads to 96×64: the crop back must keep L aligned
    out = predictor(image, output_type="np")
    assert out.shape == image.shape and out.dtype == np.uint8
    L_in, L_out = color.rgb2lab(image)[..., 0], color.rgb2lab(out)[..., 0]
    ab = hwc(raw(torch.from_numpy(L_in / 50 - 1).float()[None], output_type="pt").double() * 110)
    inside = in_gamut(L_in, ab)
    assert inside.mean() > least_inside
    # inside the gamut only the 8-bit truncation moves L: at most ~0.45 (one level down in each channel)
    assert np.abs(L_out - L_in)[inside].max() < 0.5
    if chroma_gain > 1:
        assert inside.mean() < 0.9 and np.abs(L_out - L_in)[~inside].max() > 1  # clipped: L not kept there
        assert np.abs(out[..., 0].astype(int) - out[..., 2]).mean() > 30  # and the output is coloured


def test_grey_images_resizing_and_tensors_keep_lightness_too():
    predictor = Predictor(colour_generator(0.1), device="cpu")  # pale colours: inside the gamut at these greys
    grey = (30 + photo(np.random.default_rng(4), 50, 40)[..., 1] * 0.75).astype(np.uint8)
    L_in = color.rgb2lab(np.repeat(grey[..., None], 3, -1))[..., 0]
    outputs = [
        predictor(grey, output_type="np"),
        predictor(Image.fromarray(grey), output_type="np"),
        predictor(torch.from_numpy(grey)[None], output_type="np"),
        predictor(grey, output_type="np", resize=(32, 32)),
    ]  # L is taken at the image's own size
    for out in outputs:
        assert out.shape == (40, 50, 3)
        assert np.abs(color.rgb2lab(out)[..., 0] - L_in).max() < 0.5
    assert np.array_equal(outputs[0], outputs[1]) and np.array_equal(outputs[0], outputs[2])
    rgb = predictor(torch.from_numpy(grey)[None].float() / 127.5 - 1, output_type="pt")  # float [-1, 1] in and out
    assert rgb.shape == (3, 40, 50) and rgb.min() >= -1 and rgb.max() <= 1
    with pytest.raises(ConfigError, match="1 input and 2 output"):
        Predictor(define_G(3, 3, 4, "unet_32", "batch", False, backend="eager"), device="cpu", model="colorization")
