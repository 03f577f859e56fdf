"""Convolution FLOPs of a model configuration, for the MFU figure in logs and benchmarks.

Conv: 2·Cin·Cout·k²·Hout·Wout / groups; ConvTranspose: 2·Cin·Cout·k²·Hin·Win / groups (performance.md).
One training iteration costs 3·F_G + 8·F_D per image: G forward and backward (dgrad + wgrad ≈ 2× forward);
D forward+backward on the fake and on the real pair (2 × 3·F_D) and forward+dgrad inside the G step (2·F_D).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

# Dense peak FLOP/s of the compute the precision uses (tensor cores for bf16/fp16; fp32 without TF32).
PEAK_FLOPS = {"H100": {"bf16": 790e12, "fp16": 790e12, "fp32": 67e12},
              "H200": {"bf16": 790e12, "fp16": 790e12, "fp32": 67e12}}


def conv_flops(net: nn.Module, input_shape: tuple) -> float:
    """FLOPs of one forward pass of net's convolutions, counted on a meta-device copy (no real compute)."""
    total = 0.0

    def count(module, inputs, output):
        nonlocal total
        x = inputs[0]
        k = module.kernel_size[0] * module.kernel_size[1]
        per_position = 2 * module.in_channels * module.out_channels * k / module.groups
        spatial = x.shape[-2] * x.shape[-1] if isinstance(module, nn.ConvTranspose2d) else \
            output.shape[-2] * output.shape[-1]
        total += per_position * spatial * x.shape[0]

    meta = copy.deepcopy(net).to("meta")
    for m in meta.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.register_forward_hook(count)
    with torch.no_grad():
        meta(torch.empty(input_shape, device="meta"))
    return total


def train_flops_per_image(G: nn.Module, D: nn.Module, input_nc: int, output_nc: int, size: int) -> float:
    f_g = conv_flops(G, (1, input_nc, size, size))
    f_d = conv_flops(D, (1, input_nc + output_nc, size, size))
    return 3 * f_g + 8 * f_d


def peak_flops(device: torch.device, precision: str):
    """The device's peak for this precision, or None when fastpix does not know it (MFU is then omitted)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_FLOPS.items():
        if key in name:
            return peaks.get(precision)
    return None


def cpu_roof_flops(dtype: torch.dtype, reps: int = 5) -> float:
    """This CPU's reachable FLOP/s in dtype, measured now: the faster of a 2048³ matmul and a 1×1 conv that oneDNN
    runs as one large GEMM (8×1024×32×32 by 1024×1024, channels-last), best of reps. Both, because torch's fp32
    matmul goes to MKL, which on AMD CPUs reaches about half of what oneDNN's fp32 kernels do (237 against 438
    GFLOP/s on the 2-core Zen 5, measured 2026-12-01), and the convs we run are oneDNN's."""
    import time

    import torch.nn.functional as F

    def best(fn) -> float:
        fn()
        fastest = float("inf")
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            fastest = min(fastest, time.perf_counter() - start)
        return fastest

    with torch.inference_mode():
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        matmul = 2 * 2048 ** 3 / best(lambda: a @ b)
        x = torch.randn(8, 1024, 32, 32, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(1024, 1024, 1, 1, dtype=dtype).contiguous(memory_format=torch.channels_last)
        conv = 2 * 8 * 32 * 32 * 1024 * 1024 / best(lambda: F.conv2d(x, w))
    return max(matmul, conv)
