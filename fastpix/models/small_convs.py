"""Convolutions over few pixels as one matrix multiply each: the CPU training path's choice for a U-Net's inner layers.

At 256² the U-Net's blocks at 1×1 to 8×8 pixels hold 46 of G's 54M weights and do a tenth of its arithmetic. Run by
oneDNN in a training step, each of those weights is reordered into a blocked layout three times per step (forward,
backward-data, backward-weights; 3-5 ms apiece for a 1024×512×4×4 bf16 weight) and a transposed conv's weight
gradient takes a slow kernel: a 1024→512 transposed conv at 4×4 costs ~36 ms of forward + backward for 0.8 GFLOP
(measured on a 2-core AVX-512 BF16 CPU, see docs/benchmarks.md, "CPU at real size: unet_256"). As unfold (fold for
a transposed conv) and one matmul, the weight is the matrix as it lies in memory (channels-last (O, kh, kw, I)
order, or NCHW), so nothing is reordered: ~14 ms for that layer.
Over more pixels oneDNN's direct kernels win, so a layer takes this path only when its matmul has at most
config.SMALL_CONV_COLUMNS columns (batch × pixels on the small side), chosen once per layer by `plan_small_convs`
before the first iteration (train/engine.py), never re-decided in a forward.

The sums are the convolution's: the matmul accumulates in fp32 (bf16 under autocast, as oneDNN does), and the
overlapping-window sums of fold (and of unfold's gradient) run in fp32, so a bf16 step rounds no more often than the
module path. A chosen layer stays an nn.Conv2d / nn.ConvTranspose2d (a subclass with this forward): parameters,
state_dict keys and optimizer state do not change. The fp32 training path (the reference's numbers) never uses it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call


def matmul_conv2d(x, weight, bias, stride, padding):
    """F.conv2d(x, weight, bias, stride, padding) for groups 1, dilation 1, as unfold + one matmul."""
    n, c = x.shape[:2]
    o, _, kh, kw = weight.shape
    cols = F.unfold(x.float(), (kh, kw), padding=padding, stride=stride)  # [N, C·kh·kw, L], row c·K + k
    length = cols.shape[-1]
    cols = cols.view(n, c, kh * kw, length).transpose(1, 2).reshape(n, kh * kw * c, length)  # row k·C + c
    y = torch.matmul(weight.permute(0, 2, 3, 1).reshape(o, kh * kw * c), cols)  # [N, O, L]
    if bias is not None:
        y = (y.float() + bias.view(1, -1, 1)).to(y.dtype)
    ho = (x.shape[2] + 2 * padding[0] - kh) // stride[0] + 1
    wo = (x.shape[3] + 2 * padding[1] - kw) // stride[1] + 1
    return y.view(n, o, ho, wo)


def matmul_conv_transpose2d(x, weight, bias, stride, padding):
    """F.conv_transpose2d(x, weight, bias, stride, padding) for groups 1, dilation 1, output_padding 0, as one
    matmul + fold. The product is taken as pixels × (kh·kw·O) so that the weight's gradient comes out in the
    weight's own memory order (a transposed copy of it costs more than the matmul)."""
    n, c, h, w = x.shape
    _, o, kh, kw = weight.shape
    rows = torch.matmul(x.permute(0, 2, 3, 1).reshape(n, h * w, c), weight.permute(0, 2, 3, 1).reshape(c, kh * kw * o))
    dtype = rows.dtype  # [N, L, K·O], column k·O + o; fold wants [N, O·K, L], row o·K + k
    cols = rows.view(n, h * w, kh * kw, o).permute(0, 3, 2, 1).reshape(n, o * kh * kw, h * w).float()
    out_size = ((h - 1) * stride[0] - 2 * padding[0] + kh, (w - 1) * stride[1] - 2 * padding[1] + kw)
    y = F.fold(cols, out_size, (kh, kw), padding=padding, stride=stride)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    return y.to(dtype)


class MatmulConv2d(nn.Conv2d):
    def forward(self, x):
        return matmul_conv2d(x, self.weight, self.bias, self.stride, self.padding)


class MatmulConvTranspose2d(nn.ConvTranspose2d):
    def forward(self, x, output_size=None):
        return matmul_conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding)


MATMUL_CLASSES = {nn.Conv2d: MatmulConv2d, nn.ConvTranspose2d: MatmulConvTranspose2d}


def eligible(layer: nn.Module) -> bool:
    """A plain conv the matmul forms compute exactly: groups 1, dilation 1, zero padding, no output padding."""
    return (
        isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d))
        and type(layer) in MATMUL_CLASSES
        and layer.groups == 1
        and layer.dilation == (1, 1)
        and layer.padding_mode == "zeros"
        and isinstance(layer.padding, tuple)
        and tuple(getattr(layer, "output_padding", (0, 0))) == (0, 0)
    )


def matmul_columns(layer: nn.Conv2d | nn.ConvTranspose2d, input_shape) -> int:
    """The matmul's column count for `layer` on an input of input_shape: batch × pixels on its small side (the
    output of a conv, the input of a transposed conv)."""
    n, _, h, w = input_shape
    if isinstance(layer, nn.ConvTranspose2d):
        return n * h * w
    (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
    assert isinstance(layer.padding, tuple)  # eligible() refuses padding="same"/"valid"
    ph, pw = layer.padding
    return n * ((h + 2 * ph - kh) // sh + 1) * ((w + 2 * pw - kw) // sw + 1)


def plan_small_convs(net: nn.Module, example_input: torch.Tensor, max_columns: int) -> dict:
    """Give every eligible conv of `net` whose matmul on `example_input`'s shape has at most max_columns columns
    the matmul forward (its class becomes the Matmul subclass). The shapes come from a forward on the meta device:
    no arithmetic, and no running statistic or RNG touched. Returns {layer name: 'matmul'}."""
    names = {layer: name for name, layer in net.named_modules() if eligible(layer)}
    shapes: dict[nn.Module, tuple] = {}

    def record(layer, args):
        shapes.setdefault(layer, tuple(args[0].shape))  # returns None: the arguments stay as they are

    hooks = [layer.register_forward_pre_hook(record) for layer in names]
    meta = {k: torch.empty_like(v, device="meta") for k, v in [*net.named_parameters(), *net.named_buffers()]}
    try:
        with torch.no_grad():
            functional_call(net, meta, (torch.empty_like(example_input, device="meta"),))
    finally:
        for hook in hooks:
            hook.remove()
    chosen = {}
    for layer, name in names.items():
        if layer in shapes and matmul_columns(layer, shapes[layer]) <= max_columns:
            layer.__class__ = MATMUL_CLASSES[type(layer)]
            chosen[name] = "matmul"
    return chosen
