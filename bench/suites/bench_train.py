"""Training throughput: the reference's way against fastpix's, side by side in one run.

(a) reference: eager fp32 NCHW, no graphs; (b) eager bf16 channels-last; (c) torch.compile (bf16 channels-last);
(d) fastpix engine with CUDA graphs, backend eager; (e) the same with backend triton (fused kernels; GPU only:
on a CPU Triton's interpreter would time Python, not kernels).
unet_256 + basic PatchGAN at 256² on a GPU, at batch 1, 16, 64. On a CPU the same cases run on a small
configuration (unet_64, ngf 16, 64², batch 1 and 4) so the suite stays runnable anywhere, or with
`--cpu-config real` on the real one (batch 1 and 4, few rounds), or `--cpu-config dry` on a tiny one with
torch.compile's 'eager' backend (the code path without inductor's compile time); bf16 cases run on a CPU with
native bf16 only. Each timed call runs `iters` iterations and synchronises; extra_info holds img/s, ms/iteration,
MFU (against the device's roof: fastpix.peaks.roof), peak memory.
"""

from dataclasses import asdict, dataclass

import pytest
import torch

from fastpix import runtime
from fastpix.bench_suites.common import configuration_name, roof_info, synchronize
from fastpix.models import define_D, define_G
from fastpix.train.engine import TrainEngine
from fastpix.train.flops import train_flops_per_image
from fastpix.train.step import Pix2PixStep

GPU = torch.cuda.is_available()


@dataclass(frozen=True)
class Setting:
    """One configuration: the networks (netG, ngf at size²), the batches, the iterations per timed call, the
    rounds, the warm-up iterations, and torch.compile's backend for case c."""

    netG: str
    ngf: int
    size: int
    batches: tuple
    iters: int
    rounds: int
    warmup: int
    compile_backend: str = "inductor"


SETTINGS = {
    "gpu": Setting("unet_256", 64, 256, (1, 16, 64), iters=20, rounds=5, warmup=5),
    "real": Setting("unet_256", 64, 256, (1, 4), iters=1, rounds=3, warmup=2),
    "reduced": Setting("unet_64", 16, 64, (1, 4), iters=3, rounds=2, warmup=5),
    "dry": Setting("unet_32", 2, 32, (2,), iters=1, rounds=1, warmup=1, compile_backend="eager"),
}
CASES = {
    "a_reference_fp32_nchw": dict(precision="fp32", channels_last=False, graphs=False, backend="eager"),
    "b_eager_bf16_channels_last": dict(precision="bf16", channels_last=True, graphs=False, backend="eager"),
    "c_torch_compile": dict(precision="bf16", channels_last=True, graphs=False, backend="compile"),
    "d_fastpix_graphs_eager": dict(precision="bf16", channels_last=True, graphs=True, backend="eager"),
    "e_fastpix_graphs_triton": dict(precision="bf16", channels_last=True, graphs=True, backend="triton"),
}


def build(case, batch, device, setting: Setting):
    """(engine, A, B, FLOPs per image, precision) of one case at `batch` in `setting`'s configuration."""
    torch.manual_seed(0)
    backend = "triton" if case["backend"] == "triton" else "eager"
    G = define_G(3, 3, setting.ngf, setting.netG, "batch", True, backend=backend)
    D = define_D(6, setting.ngf, "basic", backend=backend)
    fmt = torch.channels_last if case["channels_last"] else torch.contiguous_format
    G.to(device, memory_format=fmt)
    D.to(device, memory_format=fmt)
    flops = train_flops_per_image(G, D, 3, 3, setting.size)
    if case["backend"] == "compile":
        G_run, D_run = (
            torch.compile(G, backend=setting.compile_backend),
            torch.compile(D, backend=setting.compile_backend),
        )
    else:
        G_run, D_run = G, D
    precision = case["precision"]
    step = Pix2PixStep(G_run, D_run, precision=precision, device_type=device.type, graph_safe=case["graphs"])
    engine = TrainEngine(step, device, cuda_graphs=case["graphs"] and GPU)
    engine.channels_last = case["channels_last"]
    A = torch.rand(batch, 3, setting.size, setting.size, device=device) * 2 - 1
    B = torch.rand(batch, 3, setting.size, setting.size, device=device) * 2 - 1
    return engine, A, B, flops, precision


def pytest_generate_tests(metafunc):
    if "batch" in metafunc.fixturenames:
        metafunc.parametrize("batch", SETTINGS[configuration_name(metafunc.config)].batches)


@pytest.fixture
def setting(configuration):
    return SETTINGS[configuration]


@pytest.mark.parametrize("case_name", list(CASES))
def test_train_iteration(benchmark, case_name, batch, device, setting):
    case = CASES[case_name]
    if case["graphs"] and not GPU:
        pytest.skip("CUDA graphs need a GPU")
    if case["precision"] == "bf16" and not GPU and not runtime.cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16: bf16 autocast would time oneDNN's emulation")
    if case["backend"] == "triton" and not GPU:
        pytest.skip("the triton backend is timed on a GPU only (the CPU runs it in Triton's interpreter)")
    engine, A, B, flops, precision = build(case, batch, device, setting)
    for _ in range(setting.warmup):  # warm-up: graph capture, compilation, cuDNN autotuning
        engine(A, B)
    synchronize()
    if GPU:
        torch.cuda.reset_peak_memory_stats()

    def iterations():
        for _ in range(setting.iters):
            engine(A, B)
        synchronize()

    benchmark.group = f"train batch {batch}"
    benchmark.pedantic(iterations, rounds=setting.rounds, iterations=1, warmup_rounds=1)
    seconds = benchmark.stats.stats.median / setting.iters
    img_per_s = batch / seconds
    roof = roof_info(device, precision, flops * img_per_s)
    benchmark.extra_info.update(
        {
            "case": case_name,
            "batch": batch,
            "baseline": case_name.startswith("a_"),
            "config": asdict(setting),
            "precision": precision,
            "ms_per_iter": 1000 * seconds,
            "img_per_s": img_per_s,
            "gflop_per_image": flops / 1e9,
            "tflops": flops * img_per_s / 1e12,
            "mfu": roof["fraction_of_peak"],
            **roof,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if GPU else None,
        }
    )
    engine.read_losses()
