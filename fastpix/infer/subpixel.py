"""The U-Net's output layer (ConvTranspose2d 4×4, stride 2, padding 1, to 3 channels) in its sub-pixel form, for the
compiled CPU network (compiled.prepared_network).

oneDNN runs a transposed conv with a few output channels poorly: unet_256's last layer (128 → 3) cost ~10% of a
batch-1 call. Each output pixel (2i+a, 2j+b) of that layer sees only a 2×2 window of the input, the same four
kernel taps for every pixel of a phase (a, b): kernel row 3-a-2r for window row r (and the same for columns). So the
layer is one ordinary 2×2 conv over the input padded by 1, with the four phases' 3 channels side by side (12 output
channels, which oneDNN blocks well), then each phase's window cropped (phase (a, b) starts at row a, column b) and
the phases interleaved into the 2× larger image. The same products summed in the same groups: the same maths, not an
approximation (tests/test_subpixel.py: within 1e-5 relative of the transposed conv in fp32). Inductor fuses the
crop and the interleave with the Tanh after it into one pass. docs/benchmarks.md, "CPU at real size: unet_256".
"""

from __future__ import annotations

from typing import TypeGuard

import torch
import torch.nn as nn
import torch.nn.functional as F

# Transposed convs with at most this many output channels take the sub-pixel form: the output layer (RGB, grey,
# RGBA). The wider inner ones stay transposed convs, where oneDNN's own kernels are good.
MAX_OUT_CHANNELS = 4


class SubPixelConvTranspose2d(nn.Module):
    """ConvTranspose2d(kernel 4, stride 2, padding 1) as a 2×2 conv to 4×out_channels plus an interleave."""

    def __init__(self, convt: nn.ConvTranspose2d):
        super().__init__()
        if not convertible(convt):
            raise ValueError(f"{convt}: only 4×4, stride 2, padding 1 transposed convs without groups or dilation")
        w = convt.weight.detach()  # [in, out, 4, 4]
        # Phase (a, b), window (r, s) uses kernel tap (3-a-2r, 3-b-2s); phase k = 2a + b holds channels k*out...
        phases = [w[:, :, [3 - a, 1 - a]][:, :, :, [3 - b, 1 - b]] for a in (0, 1) for b in (0, 1)]
        self.out_channels = convt.out_channels
        self.weight = nn.Parameter(torch.cat(phases, 1).transpose(0, 1).contiguous(), requires_grad=False)
        self.bias = None if convt.bias is None else nn.Parameter(convt.bias.detach().repeat(4), requires_grad=False)

    def forward(self, x):
        n, _, h, w = x.shape
        out = F.conv2d(F.pad(x, (1, 1, 1, 1)), self.weight, self.bias)  # [n, 4*out, h+1, w+1]
        c = self.out_channels
        p = [out[:, k * c : (k + 1) * c, k // 2 : k // 2 + h, k % 2 : k % 2 + w] for k in range(4)]
        rows = [torch.stack((p[0], p[1]), -1), torch.stack((p[2], p[3]), -1)]  # [n, c, h, w, b]
        return torch.stack(rows, 3).reshape(n, c, 2 * h, 2 * w)  # [n, c, h, a, w, b] -> row 2i+a, column 2j+b


def convertible(m: nn.Module) -> TypeGuard[nn.ConvTranspose2d]:
    return (
        isinstance(m, nn.ConvTranspose2d)
        and m.kernel_size == (4, 4)
        and m.stride == (2, 2)
        and m.padding == (1, 1)
        and m.output_padding == (0, 0)
        and m.dilation == (1, 1)
        and m.groups == 1
    )


def subpixel_outputs(net: nn.Module) -> nn.Module:
    """`net` (changed in place) with every convertible transposed conv of at most MAX_OUT_CHANNELS outputs in its
    sub-pixel form."""
    for parent in list(net.modules()):
        for name, child in parent.named_children():
            if convertible(child) and child.out_channels <= MAX_OUT_CHANNELS:
                setattr(parent, name, SubPixelConvTranspose2d(child))
    return net
