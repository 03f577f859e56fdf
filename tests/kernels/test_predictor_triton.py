"""Predictor on backend='triton' against backend='eager': every inference norm mode, dropout off and seeded dropout
on (the same masks by construction), batch independence, which forward path runs, and the CPU refusal."""

import pytest
import torch
import torch.nn as nn
from harness import assert_close, relative_error
from tiny_models import perturb_batchnorms

from fastpix.errors import ConfigError
from fastpix.infer.predictor import Predictor
from fastpix.models import define_G
from fastpix.models.fused_convs import fused_forward_supported
from fastpix.models.norm_act import BatchNormAct2d, InstanceNormAct2d

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODES = ("instance", "batch", "running")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _no_tf32(monkeypatch):
    """No TF32 on a GPU: both backends' aten convs would round their slightly different inputs apart."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def pair(netG, norm="batch", dropout=False, ngf=4):
    """(eager, triton) generators with the same weights; BatchNorm affine and running statistics moved off their
    initial values so that every mode's use of them matters."""
    torch.manual_seed(0)
    eager = perturb_batchnorms(define_G(3, 3, ngf, netG, norm, dropout, backend="eager"))
    fused = define_G(3, 3, ngf, netG, norm, dropout, backend="triton")
    fused.load_state_dict(eager.state_dict(), strict=True)
    return eager, fused


def images(n, side, seed=1):
    g = torch.Generator().manual_seed(seed)
    return list(torch.rand(n, 3, side, side, generator=g) * 2 - 1)


def assert_outputs_close(actual, expected, what):
    for k, (a, e) in enumerate(zip(actual, expected)):
        assert_close(a, e, torch.float32, f"{what} image {k}")


@pytest.mark.parametrize("norm_mode", MODES)
def test_norm_modes_equal_eager_dropout_off(norm_mode):
    eager, fused = pair("unet_32")
    x = images(2, 32)
    predictor = Predictor(fused, DEVICE, "fp32", norm_mode=norm_mode)
    out = predictor(x, output_type="pt")
    expected = Predictor(eager, DEVICE, "fp32", norm_mode=norm_mode)(x, output_type="pt")
    assert_outputs_close(out, expected, f"triton {norm_mode}")
    # Every mode runs wholly on the fused conv kernels (instance: per-sample statistics in the conv epilogue).
    assert fused_forward_supported(predictor.network)
    # Every norm stays fused with its activation; the checkpoint's module is untouched.
    norms = [m for m in predictor.network.modules() if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d))]
    assert norms and all(isinstance(m, (BatchNormAct2d, InstanceNormAct2d)) for m in norms)
    assert all(m.activation != "none" for m in norms)
    assert fused.training and all(type(m) is BatchNormAct2d for m in fused.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize(
    "norm_mode, norm", [("instance", "batch"), ("batch", "batch"), ("running", "batch"), ("instance", "instance")]
)
def test_seeded_dropout_equals_eager(norm_mode, norm):
    """unet_64 has one level that carries dropout (fused into its up norm on triton): with one seed both backends
    draw the same per-sample masks, so the outputs agree; the masks change the output by far more than the
    tolerance (least in running mode, whose perturbed running statistics leave that level small)."""
    eager, fused = pair("unet_64", norm, dropout=True)
    x = images(2, 64)
    out = Predictor(fused, DEVICE, "fp32", norm_mode=norm_mode, dropout=True)(x, seed=11, output_type="pt")
    expected = Predictor(eager, DEVICE, "fp32", norm_mode=norm_mode, dropout=True)(x, seed=11, output_type="pt")
    assert_outputs_close(out, expected, f"triton {norm_mode} (norm {norm}) dropout")
    no_dropout = Predictor(eager, DEVICE, "fp32", norm_mode=norm_mode)(x, output_type="pt")
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(expected, no_dropout))


def test_seeded_dropout_image_does_not_depend_on_its_batch():
    _, fused = pair("unet_64", dropout=True)
    x = images(8, 64)
    together = Predictor(fused, DEVICE, "fp32", dropout=True, max_batch_size=8)(x, seed=3, output_type="pt")
    alone = Predictor(fused, DEVICE, "fp32", dropout=True, max_batch_size=1)
    for k in range(8):
        single = alone([x[k]], seed=3, indices=[k], output_type="pt")[0]
        assert_close(together[k], single, torch.float32, f"image {k} in a batch of 8 vs alone")
    assert (together[0] - together[1]).abs().max() > 1e-3  # different images, different outputs


def test_resnet_instance_mode_with_dropout_equals_eager():
    """ResNet's Dropout sits between its two convs (fused into the first norm on triton)."""
    eager, fused = pair("resnet_6blocks", dropout=True, ngf=2)
    x = images(2, 16)
    out = Predictor(fused, DEVICE, "fp32", dropout=True)(x, seed=5, output_type="pt")
    expected = Predictor(eager, DEVICE, "fp32", dropout=True)(x, seed=5, output_type="pt")
    assert_outputs_close(out, expected, "resnet triton instance dropout")


def test_cpu_without_the_interpreter_is_refused(monkeypatch):
    import fastpix.kernels

    monkeypatch.setattr(fastpix.kernels, "INTERPRETED", False)
    _, fused = pair("unet_32")
    with pytest.raises(ConfigError, match="--backend 'triton' needs a CUDA device"):
        Predictor(fused, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("norm_mode", MODES)
def test_cuda_full_size_fp32_bf16_and_graphs(norm_mode):
    """unet_256 ngf 64 at 256²: triton fp32 and bf16 against eager fp32 (relative errors: fp32 rounding, and
    bf16 autocast's ~1e-2), and CUDA graphs (instance, running) against no graphs."""
    eager, fused = pair("unet_256", ngf=64)
    x = images(4, 256)
    expected = Predictor(eager, "cuda", "fp32", norm_mode=norm_mode)(x, output_type="pt")
    for precision, bound in (("fp32", 1e-4), ("bf16", 3e-2)):
        out = Predictor(fused, "cuda", precision, norm_mode=norm_mode)(x, output_type="pt")
        for k, (a, e) in enumerate(zip(out, expected)):
            assert relative_error(a, e) < bound, f"{norm_mode} {precision} image {k}: {relative_error(a, e):.3g}"
    if norm_mode != "batch":
        graphed = Predictor(fused, "cuda", "bf16", norm_mode=norm_mode, graph_size=(256, 256)).warmup()
        plain = Predictor(fused, "cuda", "bf16", norm_mode=norm_mode)
        for a, e in zip(graphed(x, output_type="pt"), plain(x, output_type="pt")):
            assert_close(a, e, torch.bfloat16, f"{norm_mode} graphs")


def test_predict_cli_backend_triton_equals_eager(tmp_path):
    """`fastpix predict --backend triton` on a CPU switches Triton to its interpreter itself and writes what the
    eager backend writes (running mode, fp32: both paths are deterministic)."""
    import os
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    eager, _ = pair("unet_32")
    torch.save(eager.state_dict(), tmp_path / "latest_net_G.pth")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    outputs = {}
    for backend in ("eager", "triton"):
        argv = [
            sys.executable,
            "-m",
            "fastpix",
            "predict",
            "--checkpoint",
            str(tmp_path / "latest_net_G.pth"),
            "--input",
            str(tmp_path / "x.png"),
            "--output",
            str(tmp_path / backend),
            "--backend",
            backend,
            "--norm-mode",
            "running",
            "--precision",
            "fp32",
        ]  # fp32 both: the CPU default may be bf16
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("Triton's interpreter" in proc.stdout) == (backend == "triton")
        outputs[backend] = np.asarray(Image.open(tmp_path / backend / "x.png")).astype(int)
    assert np.abs(outputs["triton"] - outputs["eager"]).max() <= 1  # uint8 truncation of fp32-close outputs
