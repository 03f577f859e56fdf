"""FCN-score: `fastpix eval --segmenter` against confusion matrices counted by hand on 4×4 label maps."""

import json
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from fastpix import evaluate
from fastpix.cli import main

ROAD, CAR, SKY, PERSON, UNLISTED = (128, 64, 128), (0, 0, 142), (70, 130, 180), (220, 20, 60), (255, 255, 255)
PALETTE = {
    "classes": [
        {"id": 0, "name": "road", "rgb": ROAD},
        {"id": 1, "name": "car", "rgb": CAR},
        {"id": 2, "name": "sky", "rgb": SKY},
        {"id": 3, "name": "person", "rgb": PERSON},
    ],
    "ignore_id": 255,
}
# ground truth (in cells of 3×3 pixels): road 6, car 4, sky 4 cells, 2 unlisted (ignored)
LABELS = [[ROAD, ROAD, ROAD, ROAD], [ROAD, ROAD, CAR, CAR], [CAR, CAR, SKY, SKY], [SKY, SKY, UNLISTED, UNLISTED]]
IDS = [[0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 255, 255]]


class NearestColour(torch.nn.Module):
    """Classifies each pixel by its nearest palette colour: what it predicts is what the image is painted with."""

    def __init__(self):
        super().__init__()
        colours = [c["rgb"] for c in PALETTE["classes"]]
        self.register_buffer("colours", torch.tensor(colours, dtype=torch.float32) / 255)

    def forward(self, x):
        return -((x[:, None] - self.colours[None, :, :, None, None]) ** 2).sum(2)


class Quadrants(torch.nn.Module):
    """Declares a 2×2 input size (and fails on any other) and answers road | car over sky | person."""

    input_size: list[int]

    def __init__(self):
        super().__init__()
        self.input_size = [2, 2]
        self.register_buffer(
            "logits", torch.nn.functional.one_hot(torch.tensor([[0, 1], [2, 3]]), 4).permute(2, 0, 1).float()[None] * 10
        )

    def forward(self, x):
        assert x.shape[2] == 2 and x.shape[3] == 2
        return self.logits.expand(x.shape[0], -1, -1, -1)


def big(cells):
    """Each cell of a 4×4 map as a 3×3 block (SSIM, also scored, needs 11×11): every count below is 9×."""
    array = np.array(cells, dtype=np.uint8)
    return np.kron(array, np.ones((3, 3) + (1,) * (array.ndim - 2), dtype=np.uint8))


def write_results(root, fake):
    images = root / "results" / "images"
    images.mkdir(parents=True)
    real = [[ROAD if c == UNLISTED else c for c in row] for row in LABELS]
    for label, pixels in (("real_A", LABELS), ("fake_B", fake), ("real_B", real)):
        Image.fromarray(big(pixels)).save(images / f"0001_{label}.png")
    (root / "palette.json").write_text(json.dumps(PALETTE))
    (root / "labels").mkdir()
    Image.fromarray(big(IDS)).save(root / "labels" / "0001.png")
    return root / "results"


def run_eval(root, module, *ground_truth):
    torch.jit.script(module).save(str(root / "seg.pt"))
    assert (
        main(
            [
                "eval",
                "--results",
                str(root / "results"),
                "--segmenter",
                str(root / "seg.pt"),
                *ground_truth,
                "--json",
                str(root / "r.json"),
            ]
        )
        == 0
    )
    return json.loads((root / "r.json").read_text())


@pytest.mark.parametrize("source", ["palette", "label_dir"])
def test_scores_match_a_hand_counted_confusion_matrix(tmp_path, capsys, source):
    fake = [list(row) for row in LABELS]
    fake[0][3] = PERSON  # road seen as person (a class absent from the ground truth)
    fake[1][0] = CAR  # road seen as car
    fake[2][2] = ROAD  # sky seen as road
    fake[3][2] = CAR  # an ignored pixel: counts nowhere
    write_results(tmp_path, fake)
    flags = (
        ["--label-palette", str(tmp_path / "palette.json")]
        if source == "palette"
        else ["--label-dir", str(tmp_path / "labels")]
    )
    fcn = run_eval(tmp_path, NearestColour(), *flags)["fcn_score"]
    generated, real = fcn["fake_B"], fcn["real_B"]
    assert generated["confusion"] == (9 * np.array([[4, 1, 0, 1], [0, 4, 0, 0], [1, 0, 3, 0], [0, 0, 0, 0]])).tolist()
    assert generated["pixel_accuracy"] == pytest.approx(11 / 14)
    assert generated["class_accuracy"][:3] == pytest.approx([4 / 6, 1, 3 / 4])
    assert generated["class_accuracy"][3] is None
    assert generated["mean_class_accuracy"] == pytest.approx((4 / 6 + 1 + 3 / 4) / 3)
    assert generated["iou"][:3] == pytest.approx([4 / 7, 4 / 5, 3 / 4]) and generated["iou"][3] is None
    assert generated["mean_iou"] == pytest.approx((4 / 7 + 4 / 5 + 3 / 4) / 3)
    assert real["confusion"] == (9 * np.array([[6, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0], [0, 0, 0, 0]])).tolist()
    assert real["pixel_accuracy"] == real["mean_class_accuracy"] == real["mean_iou"] == 1.0
    assert fcn["ignored_pixel_fraction"] == pytest.approx(2 / 16)
    if source == "palette":
        assert fcn["classes"] == ["road", "car", "sky", "person"]
    out = capsys.readouterr().out
    assert "FCN-score" in out and f"{11 / 14:.4f}" in out and "ceiling" in out
    page = evaluate.summary_html(json.loads((tmp_path / "r.json").read_text()))
    assert "FCN-score" in page and f"{(4 / 7 + 4 / 5 + 3 / 4) / 3:.4f}" in page


def test_declared_input_size_resizes_the_image_and_the_logits_back(tmp_path):
    write_results(tmp_path, LABELS)
    fcn = run_eval(tmp_path, Quadrants(), "--label-palette", str(tmp_path / "palette.json"))["fcn_score"]
    for row in ("fake_B", "real_B"):
        expected = 9 * np.array([[4, 2, 0, 0], [0, 2, 2, 0], [0, 0, 2, 2], [0, 0, 0, 0]])
        assert fcn[row]["confusion"] == expected.tolist()
        assert fcn[row]["pixel_accuracy"] == pytest.approx(8 / 14)


def test_palette_tolerance_takes_blurred_colours_and_ignores_others(tmp_path):
    from fastpix.palette import load_palette

    (tmp_path / "p.json").write_text(json.dumps({"classes": [{"id": 7, "rgb": ROAD}, {"id": 2, "rgb": CAR}]}))
    palette = load_palette(str(tmp_path / "p.json"))
    image = np.array([[[130, 62, 129], [0, 0, 150], [60, 30, 130]]], dtype=np.uint8)
    assert palette.labels(image, 10).tolist() == [[7, 2, 255]]
    assert palette.labels(image, 0).tolist() == [[255, 255, 255]]


def test_user_errors_name_the_flag(tmp_path, capsys):
    write_results(tmp_path, LABELS)
    (tmp_path / "bad.json").write_text('{"classes": [{"id": 0}]}')
    torch.jit.script(NearestColour()).save(str(tmp_path / "seg.pt"))
    base = ["eval", "--results", str(tmp_path / "results")]
    assert main([*base, "--segmenter", str(tmp_path / "seg.pt")]) == 2
    assert "--label-palette FILE.json or --label-dir" in capsys.readouterr().err
    assert main([*base, "--segmenter", str(tmp_path / "seg.pt"), "--label-palette", str(tmp_path / "bad.json")]) == 2
    assert "--label-palette" in capsys.readouterr().err
    assert main([*base, "--label-dir", str(tmp_path / "labels")]) == 2
    assert "give --segmenter" in capsys.readouterr().err
    assert main([*base, "--segmenter", str(tmp_path / "nope.pt"), "--label-dir", str(tmp_path / "labels")]) == 2
    assert "--segmenter" in capsys.readouterr().err
    assert (
        main(
            [
                *base,
                "--segmenter",
                str(tmp_path / "seg.pt"),
                "--label-dir",
                str(tmp_path / "labels"),
                "--label-palette",
                str(tmp_path / "palette.json"),
            ]
        )
        == 2
    )
    assert "give one" in capsys.readouterr().err


def test_a_checkpoint_is_scored_on_its_input_labels_and_the_page_shows_it(tmp_path):
    """The demo task is labels→photo: a segmenter that knows its materials' colours recognises the real photos
    (the ceiling row) and not an untrained generator's outputs; the scores reach the results page."""
    from fastpix.data.demo import MATERIAL_COLOUR, PALETTE, write_demo_dataset
    from fastpix.models import define_G

    class Material(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("colours", torch.tensor(MATERIAL_COLOUR) / 255)

        def forward(self, x):
            x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # the stripes averaged out: a material's mean colour
            return -((x[:, None] - self.colours[None, :, :, None, None]) ** 2).sum(2)

    data = write_demo_dataset(str(tmp_path / "data"), 32, {"val": 4})
    torch.save(define_G(3, 3, 4, "unet_32", "batch", True).state_dict(), tmp_path / "gen.pth")
    torch.jit.script(Material()).save(str(tmp_path / "seg.pt"))
    (tmp_path / "p.json").write_text(
        json.dumps({"classes": [{"id": i, "rgb": c.tolist()} for i, c in enumerate(PALETTE)]})
    )
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(tmp_path / "gen.pth"),
                "--dataroot",
                data,
                "--netG",
                "unet_32",
                "--ngf",
                "4",
                "--load_size",
                "32",
                "--crop_size",
                "32",
                "--results_dir",
                str(tmp_path / "res"),
                "--segmenter",
                str(tmp_path / "seg.pt"),
                "--label-palette",
                str(tmp_path / "p.json"),
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "r.json").read_text())
    fcn = report["fcn_score"]
    assert fcn["n"] == 4 and fcn["ignored_pixel_fraction"] == 0
    assert fcn["real_B"]["pixel_accuracy"] > 0.6 and fcn["fake_B"]["pixel_accuracy"] < 0.3  # 0.68, 0.09 when written
    page = pathlib.Path(report["page"]).read_text()
    assert f"<td>{fcn['real_B']['pixel_accuracy']:.4f}</td>" in page and "ceiling" in page
