"""Evaluation: the eval command and results pages, FID/KID, and proof that fastpix learns the demo task."""

import json
import os
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from fastpix.cli import main
from fastpix.config import DataConfig, ModelConfig, TrainConfig
from fastpix.data.demo import write_demo_dataset
from fastpix.fid import fid, kid
from fastpix.models import define_G
from fastpix.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """The demo task at 32², trained briefly twice with a fixed seed: GAN + L1, and L1 only."""
    root = tmp_path_factory.mktemp("learned")
    data = write_demo_dataset(str(root / "data"), 32, {"train": 200, "val": 20})
    model = ModelConfig(netG="unet_32", ngf=16, ndf=16)
    data_cfg = DataConfig(dataroot=data, load_size=36, crop_size=32, num_threads=0)
    for name, gan_mode in (("gan", "vanilla"), ("l1", "none")):
        train(
            model,
            data_cfg,
            TrainConfig(
                name=name,
                checkpoints_dir=str(root / "ck"),
                batch_size=4,
                max_iters=600,
                n_epochs=1000,
                n_epochs_decay=0,
                gan_mode=gan_mode,
                seed=0,
                display_freq=300,
            ),
            progress=False,
        )
    return root


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """A bare reference-style weights file (no config.json; flags give the architecture) and 64² demo data.
    unet_64 has one dropout level, so the paper's protocol is visibly random."""
    root = tmp_path_factory.mktemp("untrained")
    data = write_demo_dataset(str(root / "data"), 64, {"val": 12})
    torch.manual_seed(0)
    torch.save(define_G(3, 3, 4, "unet_64", "batch", True).state_dict(), root / "gen.pth")
    return root, [
        "--checkpoint",
        str(root / "gen.pth"),
        "--dataroot",
        data,
        "--netG",
        "unet_64",
        "--ngf",
        "4",
        "--load_size",
        "64",
        "--crop_size",
        "64",
    ]


def run_eval(root, *args):
    out = root / "report.json"
    argv = ["eval", "--results_dir", str(root / "results"), "--json", str(out), *args]
    assert main(argv) == 0
    return json.loads(out.read_text())


def by_name(root, name, *args):
    return run_eval(root, "--name", name, "--checkpoints_dir", str(root / "ck"), *args)


def test_gan_beats_trivial_baselines_and_is_sharper_than_l1_only(learned):
    gan = by_name(learned, "gan", "--baselines")
    l1_only = run_eval(learned, "--checkpoint", str(learned / "ck" / "l1"))  # a run folder
    assert gan["n"] == l1_only["n"] == 20 and "paper's protocol" in gan["protocol"]
    model = gan["metrics"]
    identity, mean_target = gan["baselines"]["output = input"], gan["baselines"]["output = mean training target"]
    assert model["l1"]["mean"] < 0.8 * mean_target["l1"]["mean"]
    assert model["l1"]["mean"] < 0.5 * identity["l1"]["mean"]
    assert model["psnr"]["mean"] > mean_target["psnr"]["mean"] + 1.0
    assert model["ssim"]["mean"] > mean_target["ssim"]["mean"] + 0.05
    # the cGAN draws the stripes an L1-only generator can only average away
    assert model["hf_ratio"]["mean"] > 2.0 * l1_only["metrics"]["hf_ratio"]["mean"]
    assert gan["fid"].startswith("skipped: no --inception-weights")
    # the training run folder holds the sample grids and the loss plot
    run = learned / "ck" / "gan"
    assert os.listdir(run / "samples") and Image.open(run / "loss.png").size[0] > 500


def test_report_json_and_results_page_worst_first(untrained):
    root, flags = untrained
    full = run_eval(root, *flags)
    report = run_eval(root, *flags, "--sort", "worst", "--num_test", "5")
    assert report["n"] == 5 and [r["name"] for r in report["per_image"]] == [f"{i:04d}" for i in range(5)]
    assert report["per_image"] == full["per_image"][:5]  # the same seed gives the same dropout noise
    assert "data range 1.0" in report["scale"] and "σ 1.5" in report["scale"]
    for m in ("l1", "psnr", "ssim", "hf_ratio"):
        values = [r[m] for r in report["per_image"]]
        assert report["metrics"][m]["mean"] == pytest.approx(np.mean(values), rel=1e-12)
        assert report["metrics"][m]["std"] == pytest.approx(np.std(values), rel=1e-12, abs=1e-15)
    page = pathlib.Path(report["page"]).read_text()
    assert page.index("<th>mean</th>") < page.index("<h3>")  # the aggregate table on top
    rows = page.split("<h3>")[1:]
    l1_in_page = [float(row.split("l1 ")[1].split(",")[0]) for row in rows]
    assert len(rows) == 5 and l1_in_page == sorted(l1_in_page, reverse=True)
    stem = rows[0].split(" — ")[0]
    assert [f"images/{stem}_{k}.png" in rows[0] for k in ("real_A", "fake_B", "real_B")] == [True] * 3
    # scoring the saved images gives the same numbers as scoring the checkpoint, for the last run's images only:
    # the folder still holds the 12 images of the full run
    folder = os.path.dirname(report["page"])
    assert len(os.listdir(os.path.join(folder, "images"))) == 36
    again = run_eval(root, "--results", folder)
    assert again["n"] == 5 and "paper's protocol" in again["protocol"]
    for saved, scored in zip(again["per_image"], report["per_image"], strict=True):
        assert saved.pop("name") == scored.pop("name") and saved == pytest.approx(scored, rel=1e-12)


def test_protocols_are_applied_and_named(untrained):
    root, flags = untrained
    first = run_eval(root, *flags, "--num_test", "4")
    assert first["page"].endswith(os.path.join("eval_val_gen", "index.html"))
    assert first["per_image"] == run_eval(root, *flags, "--num_test", "4")["per_image"]  # a fixed dropout seed
    other_seed = run_eval(root, *flags, "--num_test", "4", "--seed", "1")
    assert other_seed["per_image"] != first["per_image"]  # dropout is on under the paper's protocol
    assert "dropout on, seed 1" in other_seed["protocol"]
    running = run_eval(root, *flags, "--num_test", "4", "--eval")
    assert running["protocol"] == "eval mode (--eval): running BatchNorm statistics, no dropout"
    assert running["per_image"] != first["per_image"]
    assert running["per_image"] == run_eval(root, *flags, "--num_test", "4", "--eval", "--seed", "1")["per_image"]


def test_fid_and_kid_match_a_direct_computation():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 8)), rng.normal(0.3, 1.2, size=(150, 8))
    mu_a, mu_b, ca, cb = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * linalg.sqrtm(ca @ cb).real)
    assert fid(a, b) == pytest.approx(expected, rel=1e-6)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-8)
    same, _ = kid(a[:100], a[100:], subsets=20, subset_size=50)
    different, _ = kid(a, b, subsets=20, subset_size=50)
    assert abs(same) < different / 5


def unbiased_mmd2(x, y):
    """Unbiased MMD² with the cubic polynomial kernel, pair by pair."""
    d, n, m = x.shape[1], len(x), len(y)

    def k(u, v):
        return (u @ v / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


class Features(torch.nn.Module):
    """A tiny stand-in for Inception: uint8 NCHW in, 6 features out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2)

    def features(self, x):
        return torch.tanh(self.conv(x.float() / 127.5 - 1)).mean(dim=(2, 3))

    def forward(self, x):
        return self.features(x)


class FeaturesOnRequest(Features):
    """Like inception-2015-12-05.pt: class probabilities unless return_features=True."""

    def forward(self, x, return_features: bool = False):
        features = self.features(x)
        return features if return_features else torch.softmax(features, dim=1)


@pytest.mark.parametrize("network", [Features, FeaturesOnRequest])
def test_fid_kid_with_a_torchscript_feature_network(untrained, tmp_path, network):
    """Any TorchScript network from uint8 NCHW to features serves (here a tiny conv net, not Inception)."""
    from scipy import linalg

    path = tmp_path / "features.pt"
    torch.jit.script(network()).save(str(path))
    net = Features()
    root, flags = untrained
    report = run_eval(root, *flags, "--inception-weights", str(path))
    assert report["n"] == 12
    folder = os.path.dirname(report["page"])

    def feats(label):
        images = [np.asarray(Image.open(f"{folder}/images/{r['name']}_{label}.png")) for r in report["per_image"]]
        with torch.no_grad():
            return net(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)).double().numpy()

    fake, real = feats("fake_B"), feats("real_B")
    cf, cr = np.cov(fake, rowvar=False), np.cov(real, rowvar=False)
    expected = ((fake.mean(0) - real.mean(0)) ** 2).sum() + np.trace(cf + cr - 2 * linalg.sqrtm(cf @ cr).real)
    assert report["fid"] == pytest.approx(expected, rel=1e-5) and report["fid"] > 0
    # fewer images than subset_size: every subset is the whole set, so KID is the plain unbiased MMD²
    assert report["kid"]["mean"] == pytest.approx(unbiased_mmd2(fake, real), abs=1e-8)  # float32 features
    assert f"FID: {report['fid']:.6g}" in pathlib.Path(report["page"]).read_text()
    one = run_eval(root, *flags, "--num_test", "1", "--inception-weights", str(path))
    assert one["fid"] == one["kid"] == "skipped: FID/KID need at least 2 images, got 1"


def test_bad_inputs_are_named(untrained, tmp_path, capsys):
    _, flags = untrained
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    argv = ["eval", *flags, "--results_dir", str(tmp_path), "--num_test", "2"]
    assert main([*argv, "--inception-weights", str(bad)]) == 2
    assert "--inception-weights" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "--checkpoint" in err and "nothing" in err
    assert main(["eval", "--results", str(tmp_path)]) == 2
    assert "no scores.json and no images/*_fake_B.png" in capsys.readouterr().err


def test_eval_mode_runs_the_predictors_folded_path_and_equals_the_modules_eval_mode(tiny_data):
    from fastpix.data.dataset import PairedDataset
    from fastpix.infer.protocol import translate_split

    torch.manual_seed(0)
    G = define_G(3, 3, 8, "unet_32", "batch", True, backend="eager")
    with torch.no_grad():  # running statistics that are not the identity, so folding them is checked
        for m in G.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    dataset = PairedDataset(tiny_data, "test", "AtoB", 3, 3, "resize_and_crop", 32, 32, flip=False)
    items = list(translate_split(G, dataset, 3, True, 0, torch.device("cpu"), "fp32"))
    assert len(items) == 3
    G.eval()
    for _, real_A, fake, _ in items:
        with torch.no_grad():
            want = G(real_A[None])[0]
        assert float((fake - want).norm() / want.norm()) < 1e-4
