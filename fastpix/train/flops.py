"""Convolution FLOPs of a model configuration, for the MFU figure in logs and benchmarks (the peak it is against:
fastpix/peaks.py).

Conv: 2·Cin·Cout·k²·Hout·Wout / groups; ConvTranspose: 2·Cin·Cout·k²·Hin·Win / groups.
One training iteration costs 3·F_G + 8·F_D per image: G forward and backward (dgrad + wgrad ≈ 2× forward);
D forward+backward on the fake and on the real pair (2 × 3·F_D) and forward+dgrad inside the G step (2·F_D).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


def conv_flops(net: nn.Module, input_shape: tuple) -> float:
    """FLOPs of one forward pass of net's convolutions, counted on a meta-device copy (no real compute)."""
    total = 0.0

    def count(module, inputs, output):
        nonlocal total
        x = inputs[0]
        k = module.kernel_size[0] * module.kernel_size[1]
        per_position = 2 * module.in_channels * module.out_channels * k / module.groups
        spatial = (
            x.shape[-2] * x.shape[-1] if isinstance(module, nn.ConvTranspose2d) else output.shape[-2] * output.shape[-1]
        )
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
