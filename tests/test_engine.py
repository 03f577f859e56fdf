"""The training engine: multi-process training over gloo, precision, device-side losses, FLOPs, CUDA graphs."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import pytest
import torch

from fastpix.config import DataConfig, ModelConfig, TrainConfig
from fastpix.models import define_D, define_G
from fastpix.store.weights import load_into, load_train_state
from fastpix.train.engine import TrainEngine
from fastpix.train.flops import conv_flops
from fastpix.train.loop import train
from fastpix.train.step import LOSS_NAMES, Pix2PixStep

TINY = [
    "--netG",
    "unet_32",
    "--ngf",
    "4",
    "--ndf",
    "4",
    "--load_size",
    "36",
    "--crop_size",
    "32",
    "--norm",
    "instance",
    "--no_dropout",
    "--num_threads",
    "0",
    "--quiet",
    "--seed",
    "3",
    "--print_freq",
    "1",
    "--precision",
    "fp32",
]  # the subprocesses do not see conftest: fp32 whatever the CPU


def fastpix(*argv, cwd):
    return subprocess.run(
        [sys.executable, "-m", "fastpix", *argv], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_two_processes_over_gloo_equal_one_process(tiny_data, tmp_path):
    """Global batch 2 on 2 ranks = batch 2 on one process, same data order; its checkpoint resumes alone."""
    common = ["train", "--dataroot", tiny_data, "--batch_size", "2", "--max_iters", "3", *TINY]
    single = fastpix(*common, "--name", "single", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    multi = fastpix(*common, "--name", "multi", "--nproc", "2", cwd=tmp_path)
    assert multi.returncode == 0, multi.stderr
    log = {
        name: [json.loads(x) for x in (tmp_path / f"checkpoints/{name}/metrics.jsonl").read_text().splitlines()]
        for name in ("single", "multi")
    }
    assert [r["iter"] for r in log["multi"]] == [1, 2, 3]
    for a, b in zip(log["single"], log["multi"]):
        for k in LOSS_NAMES:  # rank 0's losses (its half of the batch) vs the whole batch: same data, same step
            assert abs(a[k] - b[k]) < 0.5 * abs(a[k]) + 0.05
    # Compare what G computes, not each weight: a conv bias before InstanceNorm has a true gradient of zero,
    # so Adam turns its rounding noise into lr-sized steps that differ between the runs and change nothing.
    x = torch.randn(2, 3, 32, 32)
    outputs = []
    for name in ("single", "multi"):
        G = define_G(3, 3, 4, "unet_32", "instance", False, backend="eager")
        load_into(G, str(tmp_path / f"checkpoints/{name}/latest_net_G.safetensors"))
        outputs.append(G(x))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-3, atol=1e-4)
    resumed = fastpix(
        "train",
        "--dataroot",
        tiny_data,
        "--name",
        "multi",
        "--continue_train",
        "--max_iters",
        "4",
        "--batch_size",
        "2",
        "--quiet",
        "--num_threads",
        "0",
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert load_train_state(str(tmp_path / "checkpoints/multi/latest_train_state.pt"))["iteration"] == 4


def test_engine_sums_losses_on_the_device():
    G, D = define_G(3, 3, 4, "unet_32", backend="eager"), define_D(6, 4, "basic", backend="eager")
    step = Pix2PixStep(G, D)
    seen = []
    original = step.__call__

    class Recording:
        graph_safe = False
        precision = "fp32"
        fake_B = None

        def __call__(self, a, b):
            losses = original(a, b)
            seen.append({k: float(v) for k, v in losses.items()})
            return losses

    engine = TrainEngine(Recording(), torch.device("cpu"))
    for _ in range(3):
        engine(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    means = engine.read_losses()
    for k in LOSS_NAMES:
        assert means[k] == pytest.approx(sum(s[k] for s in seen) / 3, rel=1e-6)
    assert engine.loss_count == 0 and float(engine.loss_sum.abs().sum()) == 0


def test_bf16_autocast_step_on_cpu_tracks_fp32():
    G, D = define_G(3, 3, 8, "unet_32", backend="eager"), define_D(6, 8, "basic", backend="eager")
    G2, D2 = define_G(3, 3, 8, "unet_32", backend="eager"), define_D(6, 8, "basic", backend="eager")
    G2.load_state_dict(G.state_dict())
    D2.load_state_dict(D.state_dict())
    A, B = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    exact = Pix2PixStep(G, D)(A, B)
    mixed = Pix2PixStep(G2, D2, precision="bf16")(A, B)
    for k in LOSS_NAMES:
        assert float(mixed[k]) == pytest.approx(float(exact[k]), rel=0.05, abs=0.02)
    with pytest.raises(ValueError, match="--precision"):
        Pix2PixStep(G, D, precision="fp8")


def test_lr_lives_in_a_tensor_when_graph_safe():
    G, D = define_G(3, 3, 4, "unet_32", backend="eager"), define_D(6, 4, "basic", backend="eager")
    step = Pix2PixStep(G, D, lr=1e-3, graph_safe=True)
    lr_tensor = step.opt_G.param_groups[0]["lr"]
    step.set_lr(5e-4)
    assert step.opt_G.param_groups[0]["lr"] is lr_tensor and float(lr_tensor) == pytest.approx(5e-4)
    saved = Pix2PixStep(G, D, lr=2e-3).state_dict()  # a checkpoint from a run without graphs
    step.load_state_dict(saved)
    assert step.opt_G.param_groups[0]["lr"] is lr_tensor and float(lr_tensor) == pytest.approx(2e-3)


def test_flops_of_the_paper_configuration():
    G = define_G(3, 3, 64, "unet_256", backend="eager")
    D = define_D(6, 64, "basic", backend="eager")
    assert conv_flops(G, (1, 3, 256, 256)) / 1e9 == pytest.approx(12.10, abs=0.01)
    assert conv_flops(D, (1, 6, 256, 256)) / 1e9 == pytest.approx(6.39, abs=0.01)


def gpu_configs(tiny_data, tmp_path, **train):
    model = ModelConfig(netG="unet_64", ngf=8, ndf=8)
    data = DataConfig(dataroot=tiny_data, load_size=72, crop_size=64, num_threads=0)
    return (
        model,
        data,
        dataclasses.replace(
            TrainConfig(name="g", checkpoints_dir=str(tmp_path), batch_size=2, print_freq=1, seed=1, max_iters=8),
            **train,
        ),
    )


@pytest.mark.parametrize("tf32", [False, True])
def test_fp32_means_fp32_unless_tf32_is_asked_for(tiny_data, tmp_path, tf32):
    """cuDNN allows TF32 by default; fastpix's --precision fp32 turns it off unless --tf32 is given."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    model = ModelConfig(netG="unet_32", ngf=4, ndf=4, norm="instance")
    data = DataConfig(dataroot=tiny_data, load_size=36, crop_size=32, num_threads=0)
    cfg = TrainConfig(name="tf32", checkpoints_dir=str(tmp_path), max_iters=1, tf32=tf32)
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = not tf32
        train(model, data, cfg, progress=False)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (tf32, tf32)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.gpu
def test_cuda_graphs_match_eager_losses(tiny_data, tmp_path):
    runs = {}
    for graphs in (False, True):
        model, data, cfg = gpu_configs(tiny_data, tmp_path / str(graphs), cuda_graphs=graphs, precision="bf16")
        run = train(model, data, cfg, progress=False)
        runs[graphs] = [json.loads(x) for x in pathlib.Path(f"{run}/metrics.jsonl").read_text().splitlines()]
    for a, b in zip(runs[False], runs[True]):
        for k in LOSS_NAMES:
            assert b[k] == pytest.approx(a[k], rel=0.1, abs=0.05)


@pytest.mark.gpu
def test_graph_replays_draw_fresh_dropout_masks():
    G = define_G(3, 3, 8, "unet_64", use_dropout=True, backend="eager").cuda()
    D = define_D(6, 8, "basic", backend="eager").cuda()
    engine = TrainEngine(
        Pix2PixStep(G, D, lr=0.0, graph_safe=True, device_type="cuda"), torch.device("cuda"), cuda_graphs=True, warmup=1
    )
    A, B = torch.randn(2, 3, 64, 64, device="cuda"), torch.randn(2, 3, 64, 64, device="cuda")
    outputs = []
    for _ in range(4):  # lr 0: weights stay, so outputs differ only through dropout (and BN running stats)
        engine(A, B)
        outputs.append(engine.fake_B.clone())
    assert engine.graph is not None
    assert not torch.equal(outputs[2], outputs[3])
