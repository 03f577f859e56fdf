"""Training throughput: the reference's way against fastpix's, side by side in one run.

(a) reference: eager fp32 NCHW, no graphs; (b) eager bf16 channels-last; (c) torch.compile (bf16 channels-last);
(d) fastpix engine with CUDA graphs, backend eager; (e) the same with backend triton (fused kernels; GPU only:
on a CPU Triton's interpreter would time Python, not kernels).
unet_256 + basic PatchGAN at 256² on a GPU, at batch 1, 16, 64. On a CPU the same cases run on a small
configuration (unet_64, ngf 16, 64², batch 1 and 4) so the suite stays runnable anywhere, or with
`--cpu-config real` on the real one (batch 1 and 4, few rounds); bf16 cases run on a CPU with native bf16 only.
Each timed call runs ITERS iterations and synchronises; extra_info holds img/s, ms/iteration, MFU (on a CPU against
a large matmul of the same precision timed in this run: conftest.peak), peak memory.
"""
import pytest
import torch

from conftest import cpu_real, peak, synchronize
from fastpix import runtime
from fastpix.models import define_D, define_G
from fastpix.train.engine import TrainEngine
from fastpix.train.flops import train_flops_per_image
from fastpix.train.step import Pix2PixStep

GPU = torch.cuda.is_available()
REAL = GPU or cpu_real()
CONFIG = dict(netG="unet_256", ngf=64, size=256) if REAL else dict(netG="unet_64", ngf=16, size=64)
BATCHES = (1, 16, 64) if GPU else (1, 4)
ITERS = 20 if GPU else 1 if REAL else 3
CASES = {
    "a_reference_fp32_nchw": dict(precision="fp32", channels_last=False, graphs=False, backend="eager"),
    "b_eager_bf16_channels_last": dict(precision="bf16", channels_last=True, graphs=False, backend="eager"),
    "c_torch_compile": dict(precision="bf16", channels_last=True, graphs=False, backend="compile"),
    "d_fastpix_graphs_eager": dict(precision="bf16", channels_last=True, graphs=True, backend="eager"),
    "e_fastpix_graphs_triton": dict(precision="bf16", channels_last=True, graphs=True, backend="triton"),
}


def build(case, batch, device):
    torch.manual_seed(0)
    backend = "triton" if case["backend"] == "triton" else "eager"
    G = define_G(3, 3, CONFIG["ngf"], CONFIG["netG"], "batch", True, backend=backend)
    D = define_D(6, CONFIG["ngf"], "basic", backend=backend)
    fmt = torch.channels_last if case["channels_last"] else torch.contiguous_format
    G.to(device, memory_format=fmt)
    D.to(device, memory_format=fmt)
    flops = train_flops_per_image(G, D, 3, 3, CONFIG["size"])
    G_run, D_run = (torch.compile(G), torch.compile(D)) if case["backend"] == "compile" else (G, D)
    precision = case["precision"]
    step = Pix2PixStep(G_run, D_run, precision=precision, device_type=device.type, graph_safe=case["graphs"])
    engine = TrainEngine(step, device, cuda_graphs=case["graphs"] and GPU)
    engine.channels_last = case["channels_last"]
    A = torch.rand(batch, 3, CONFIG["size"], CONFIG["size"], device=device) * 2 - 1
    B = torch.rand(batch, 3, CONFIG["size"], CONFIG["size"], device=device) * 2 - 1
    return engine, A, B, flops, precision


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case_name", list(CASES))
def test_train_iteration(benchmark, case_name, batch, device):
    case = CASES[case_name]
    if case["graphs"] and not GPU:
        pytest.skip("CUDA graphs need a GPU")
    if case["precision"] == "bf16" and not GPU and not runtime.cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16: bf16 autocast would time oneDNN's emulation")
    if case["backend"] == "triton" and not GPU:
        pytest.skip("the triton backend is timed on a GPU only (the CPU runs it in Triton's interpreter)")
    engine, A, B, flops, precision = build(case, batch, device)
    for _ in range(5 if GPU or not REAL else 2):  # warm-up: graph capture, compilation, cuDNN autotuning
        engine(A, B)
    synchronize()
    if GPU:
        torch.cuda.reset_peak_memory_stats()

    def iterations():
        for _ in range(ITERS):
            engine(A, B)
        synchronize()

    benchmark.group = f"train batch {batch}"
    benchmark.pedantic(iterations, rounds=5 if GPU else 3 if REAL else 2, iterations=1, warmup_rounds=1)
    seconds = benchmark.stats.stats.median / ITERS
    img_per_s = batch / seconds
    peak_flops = peak(device, precision)
    benchmark.extra_info.update({
        "case": case_name, "batch": batch, "baseline": case_name.startswith("a_"), "config": CONFIG, "precision": precision,
        "ms_per_iter": 1000 * seconds, "img_per_s": img_per_s, "gflop_per_image": flops / 1e9,
        "tflops": flops * img_per_s / 1e12, "mfu": flops * img_per_s / peak_flops if peak_flops else None,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2 ** 30 if GPU else None})
    engine.read_losses()
