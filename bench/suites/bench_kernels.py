"""Each fused kernel beside its eager PyTorch twin, on the same inputs (the factories the kernel tests use: layers.py).

- norm + activation (+ dropout): nn.BatchNorm2d → LeakyReLU / ReLU (→ Dropout) against BatchNormAct2d, in training
  mode (batch statistics and running-stat updates), at every distinct pix2pix norm layer shape (unet_256 + basic D
  at 256²);
- the PatchGAN loss: nn.BCEWithLogitsLoss against patchgan_loss on 30×30 logits;
- λ·L1: the training step's eager L1 (nn.L1Loss on fp32 copies, times λ) against l1_loss on 3×256² images;
each at batch 1, 16 and 64, bf16 and fp32, forward ('fwd') and forward + backward ('fwd_bwd').

On a GPU each timed call replays a CUDA graph of REPS calls (launch overhead out of the way, as in a captured
training iteration) and synchronises; extra_info holds the median per call, the speed-up over the eager twin (when
it ran first in the same session), the effective bandwidth — the bytes a perfectly fused kernel must move (fwd: read
x, write y; bwd: read x and dy, write dx) over the time — and that as a percentage of this device's measured copy
bandwidth. The device, versions and git revision are in the JSON's machine_info (conftest.py). Without a GPU the
eager cases run on one small shape and the Triton cases are skipped: the interpreter checks correctness
(tests/kernels), it says nothing about speed.

Run: `fastpix bench --suite kernels` (or pytest bench/suites/bench_kernels.py --benchmark-json=...).
"""

import pytest
import torch
import torch.nn as nn

from fastpix.bench_suites.common import roof_info, synchronize
from fastpix.bench_suites.layers import (
    PIX2PIX_CONV_LAYERS,
    PIX2PIX_NORM_LAYERS,
    block_step,
    l1_inputs,
    logits_input,
    norm_act_inputs,
)
from fastpix.models import define_D, define_G, tune_layers
from fastpix.models.tuning import conv_tuning
from fastpix.train.flops import conv_flops

GPU = torch.cuda.is_available()
if GPU:  # importing the kernels on a CPU-only machine is fine; launching them is not (skipped below)
    from fastpix.kernels.l1_loss import l1_loss
    from fastpix.kernels.patchgan_loss import patchgan_loss
    from fastpix.models.norm_act import BatchNormAct2d

REPS = 20 if GPU else 1
BATCHES = (1, 16, 64) if GPU else (1,)
DTYPES = (torch.bfloat16, torch.float32) if GPU else (torch.float32,)
# Distinct (C, H, W, activation, p) of the pix2pix norm layers, named after their first use.
_seen: dict[tuple, str] = {}
for _name, *_shape in PIX2PIX_NORM_LAYERS:
    _seen.setdefault(tuple(_shape), _name)
NORM_LAYERS = [(name, *shape) for shape, name in _seen.items()] if GPU else [("G.down5", 512, 8, 8, "leaky_relu", 0.0)]
LAMBDA_L1 = 100.0
_eager_medians: dict[str, float] = {}  # group → the eager twin's median per call, for the speed-up of the fused case
# The conv blocks' block sizes, measured in each block's warm-up (as a model's tuning step does) and cached with
# this machine's other timings.
TUNING = conv_tuning()


@pytest.fixture(scope="module")
def copy_bandwidth():
    """This device's measured copy bandwidth in bytes/s (read + write of a 1 GiB buffer); None without a GPU."""
    if not GPU:
        return None
    src = torch.empty(2**28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * src.numel() * src.element_size() / sorted(times)[len(times) // 2]


def timed(fn):
    """A callable running fn REPS times and waiting for it: on a GPU one CUDA-graph replay of REPS calls."""
    if not GPU:
        return fn
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), TUNING.measuring():  # the warm-up is the tuning step: block sizes measured here
        for _ in range(3):  # warm-up: Triton compilation, cuDNN heuristics, autograd buffers
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPS):
            fn()

    def replay():
        graph.replay()
        synchronize()

    return replay


def record(benchmark, group, impl, dtype, batch, bytes_moved, bandwidth, **info):
    if benchmark.stats is None:  # --benchmark-disable: each case ran once as a smoke test, nothing was timed
        return
    per_call = benchmark.stats.stats.median / REPS
    if impl == "eager":
        _eager_medians[group] = per_call
    eager = _eager_medians.get(group)
    benchmark.extra_info.update(
        {
            "impl": impl,
            "baseline": impl == "eager",
            "dtype": str(dtype)[6:],
            "batch": batch,
            "median_ms_per_call": 1000 * per_call,
            "speedup": eager / per_call if eager and impl != "eager" else None,
            "gb_per_s": bytes_moved / per_call / 1e9,
            "pct_of_copy_bandwidth": 100 * bytes_moved / per_call / bandwidth if bandwidth else None,
            "copy_bandwidth_gb_per_s": bandwidth / 1e9 if bandwidth else None,
            "reps_per_timed_call": REPS,
            **info,
        }
    )


def run(benchmark, group, fn):
    benchmark.group = group
    benchmark.pedantic(timed(fn), rounds=20 if GPU else 3, iterations=1, warmup_rounds=2)


def norm_modules(impl, C, activation, p, device, dtype):
    if impl == "eager":
        layers = [nn.BatchNorm2d(C)]
        layers += [nn.LeakyReLU(0.2)] if activation == "leaky_relu" else [nn.ReLU()]
        layers += [nn.Dropout(p)] if p > 0 else []
        module = nn.Sequential(*layers)
    else:
        module = BatchNormAct2d(C, activation=activation, slope=0.2, dropout_p=p)
    # fp32 parameters and statistics whatever the activations' dtype, as under autocast
    return module.to(device).train()


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("layer", NORM_LAYERS, ids=[layer[0] for layer in NORM_LAYERS])
@pytest.mark.parametrize("impl", ["eager", "triton"])
def test_norm_act(benchmark, impl, layer, batch, dtype, mode, device, copy_bandwidth):
    if impl == "triton" and not GPU:
        pytest.skip("the Triton kernels are timed on a GPU only (on a CPU they run in the interpreter)")
    name, C, H, W, activation, p = layer
    inputs = norm_act_inputs(batch, C, H, W, dtype, device, seed=0)
    x = inputs["x"].requires_grad_(mode == "fwd_bwd")
    dy = inputs["dy"]
    module = norm_modules(impl, C, activation, p, device, dtype)
    params = [x, *module.parameters()]

    def call():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            y = module(x)
        if mode == "fwd_bwd":
            torch.autograd.grad(y, params, dy)

    run(
        benchmark,
        f"norm_act {name} {C}x{H}x{W} {activation}{' dropout' if p else ''} batch {batch} {str(dtype)[6:]} {mode}",
        call,
    )
    elements = x.numel() * x.element_size()
    record(
        benchmark,
        benchmark.group,
        impl,
        dtype,
        batch,
        elements * (2 if mode == "fwd" else 5),
        copy_bandwidth,
        layer=name,
        shape=[batch, C, H, W],
        activation=activation,
        dropout=p,
    )


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("impl", ["eager", "triton"])
def test_patchgan_loss(benchmark, impl, batch, dtype, mode, device, copy_bandwidth):
    if impl == "triton" and not GPU:
        pytest.skip("the Triton kernels are timed on a GPU only (on a CPU they run in the interpreter)")
    logits = logits_input(batch, dtype, device, seed=0).requires_grad_(mode == "fwd_bwd")
    bce = nn.BCEWithLogitsLoss()
    target = torch.ones_like(logits)

    def call():
        # eager as in autocast: BCE-with-logits runs in fp32 on an upcast copy
        loss = bce(logits.float(), target.float()) if impl == "eager" else patchgan_loss(logits, True)
        if mode == "fwd_bwd":
            torch.autograd.grad(loss, logits)

    run(benchmark, f"patchgan_loss batch {batch} {str(dtype)[6:]} {mode}", call)
    size = logits.numel() * logits.element_size()
    record(
        benchmark,
        benchmark.group,
        impl,
        dtype,
        batch,
        size * (1 if mode == "fwd" else 2),
        copy_bandwidth,
        shape=list(logits.shape),
    )


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("impl", ["eager", "triton"])
def test_l1_loss(benchmark, impl, batch, dtype, mode, device, copy_bandwidth):
    if impl == "triton" and not GPU:
        pytest.skip("the Triton kernels are timed on a GPU only (on a CPU they run in the interpreter)")
    fake, real = l1_inputs(batch, dtype, device, seed=0)
    fake.requires_grad_(mode == "fwd_bwd")
    l1 = nn.L1Loss()

    def call():
        # eager as the training step runs it: nn.L1Loss on fp32 copies, times λ
        loss = l1(fake.float(), real.float()) * LAMBDA_L1 if impl == "eager" else l1_loss(fake, real, LAMBDA_L1)
        if mode == "fwd_bwd":
            torch.autograd.grad(loss, fake)

    run(benchmark, f"l1_loss batch {batch} {str(dtype)[6:]} {mode}", call)
    size = fake.numel() * fake.element_size()
    record(
        benchmark,
        benchmark.group,
        impl,
        dtype,
        batch,
        size * (2 if mode == "fwd" else 3),
        copy_bandwidth,
        shape=list(fake.shape),
    )


# ==============================================================================================================
# Fused convolutions (kernels/conv_bn_act.py): each pix2pix conv block, then the whole G and D
# ==============================================================================================================
# Per layer of layers.py (the blocks the GPU tests check), bf16 channels-last, batch 1/16/64: the fused block (conv
# with the producer's BatchNorm + activation applied on load and this layer's BatchNorm statistics in the epilogue)
# against eager cuDNN conv + BatchNorm + activation, forward ('fwd') and forward + backward ('fwd_bwd').
# extra_info: median per call, speed-up over eager, achieved TFLOP/s (ConvLayer.flops' count; fwd_bwd counts dgrad
# and wgrad, no dgrad for an image input) and the fraction of this device's roof (fastpix.peaks: the datasheet's
# dense bf16 peak). The whole networks (unet_256 ngf 64, basic D ndf 64, 256², bf16 autocast, forward + backward)
# run with backend eager and triton (with the per-layer choices tune_layers makes before timing). Without a GPU only
# eager runs, on the smallest layer.

CONV_LAYERS = PIX2PIX_CONV_LAYERS if GPU else [layer for layer in PIX2PIX_CONV_LAYERS if layer.name == "G.down8"]
CONV_DTYPE = torch.bfloat16 if GPU else torch.float32
CONV_PRECISION = "bf16" if GPU else "fp32"


def record_compute(benchmark, impl, batch, flops, device, **info):
    if benchmark.stats is None:
        return
    per_call = benchmark.stats.stats.median / REPS
    group = benchmark.group
    if impl == "eager":
        _eager_medians[group] = per_call
    eager = _eager_medians.get(group)
    benchmark.extra_info.update(
        {
            "impl": impl,
            "baseline": impl == "eager",
            "dtype": str(CONV_DTYPE)[6:],
            "batch": batch,
            "median_ms_per_call": 1000 * per_call,
            "speedup": eager / per_call if eager and impl != "eager" else None,
            "tflop_per_s": flops / per_call / 1e12,
            **roof_info(device, CONV_PRECISION, flops / per_call),
            "reps_per_timed_call": REPS,
            **info,
        }
    )


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("layer", CONV_LAYERS, ids=[layer.name for layer in CONV_LAYERS])
@pytest.mark.parametrize("impl", ["eager", "triton"])
def test_conv_block(benchmark, impl, layer, batch, mode, device):
    if impl == "triton" and not GPU:
        pytest.skip("the Triton kernels are timed on a GPU only (on a CPU they run in the interpreter)")
    call = block_step(
        layer,
        batch,
        CONV_DTYPE,
        device,
        "triton" if impl == "triton" else "cudnn",
        backward=mode == "fwd_bwd",
        tuning=TUNING,
    )
    run(
        benchmark,
        f"conv {layer.name} {'+'.join(map(str, layer.sources))}x{layer.size}² -> {layer.out_channels} "
        f"batch {batch} {str(CONV_DTYPE)[6:]} {mode}",
        call,
    )
    passes = 1 if mode == "fwd" else (2 if layer.reads[0] == "image" else 3)
    record_compute(
        benchmark,
        impl,
        batch,
        passes * layer.flops(batch),
        device,
        layer=layer.name,
        flops_per_call=passes * layer.flops(batch),
    )


NETWORKS = {
    "G unet_256": (lambda backend: define_G(3, 3, 64, "unet_256", "batch", True, backend=backend), 3),
    "D basic": (lambda backend: define_D(6, 64, "basic", backend=backend), 6),
}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("network", sorted(NETWORKS))
@pytest.mark.parametrize("impl", ["eager", "triton"])
def test_conv_network(benchmark, impl, network, batch, device):
    if impl == "triton" and not GPU:
        pytest.skip("backend triton is timed on a GPU only")
    build, channels = NETWORKS[network]
    torch.manual_seed(0)
    net = build(impl).to(device, memory_format=torch.channels_last).train()
    x = torch.randn(batch, channels, 256, 256, device=device).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=CONV_DTYPE, enabled=GPU):
        tune_layers(net, x)  # backend triton: the per-layer choices (Triton or cuDNN), before timing
        grad = torch.randn_like(net(x))

    def call():
        with torch.autocast(device.type, dtype=CONV_DTYPE, enabled=GPU):
            out = net(x)
        out.backward(grad)

    run(benchmark, f"network {network} 256² batch {batch} {str(CONV_DTYPE)[6:]} fwd_bwd", call)
    flops = 3 * conv_flops(net, (1, channels, 256, 256)) * batch
    record_compute(
        benchmark,
        impl,
        batch,
        flops,
        device,
        network=network,
        flops_per_call=flops,
        img_per_s=batch / (benchmark.stats.stats.median / REPS) if benchmark.stats else None,
    )
