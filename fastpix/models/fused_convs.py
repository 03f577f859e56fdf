"""backend='triton' forward on the fused conv kernels (kernels/conv_bn_act.py): BatchNorm never materialised.

The module tree stays the eager one (so state_dicts are unchanged); a `FusedConvs` walks it and runs every conv and
ConvTranspose as one fused Triton kernel (fastpix/models/conv_layer.py), passing `Pending` tensors between layers:
a conv's raw output plus the BatchNorm, activation and dropout its consumers apply while loading it. A BatchNorm
layer in training mode turns into the statistics its conv's epilogue computes (running statistics and
num_batches_tracked updated as nn.BatchNorm2d does); in eval mode into its running statistics. The U-Net's up conv
reads skip and up as two sources: no concat is written.

Layers are recognised by type: Conv2d, ConvTranspose2d, BatchNorm2d and InstanceNorm2d without running statistics
(and their fused subclasses BatchNormAct2d / InstanceNormAct2d, whose activation and dropout they carry; instance
norm's statistics are per sample), ReLU, LeakyReLU, Dropout, Tanh, Identity. `set_forward_path` gives a network
made of these only this forward, once, at build time, with the ConvTuning that holds its per-layer choices (fused
Triton block or cuDNN); fastpix.models.tuning.tune_layers makes those choices before the first iteration, so that no
forward measures anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from fastpix.models.conv_layer import ConvCall, Pending, measured_seconds, pending_output, run_eager, run_triton
from fastpix.models.network import Network
from fastpix.models.tuning import conv_tuning

if TYPE_CHECKING:  # the kernels are imported when first used: TRITON_INTERPRET may be set until then
    from fastpix.kernels.conv_tuning import ConvTuning

ACTIVATION_MODULES = (nn.ReLU, nn.LeakyReLU)


def _is_norm(m):
    """A norm layer the fused convs absorb: BatchNorm2d, or InstanceNorm2d without running statistics."""
    return isinstance(m, nn.BatchNorm2d) or (isinstance(m, nn.InstanceNorm2d) and not m.track_running_stats)


def set_forward_path(net: Network, strict: bool = False, tuning: ConvTuning | None = None) -> str:
    """Fix `net`'s forward once for backend 'triton' (define_G / define_D call it after fusing the norms, strict;
    code that swaps layers afterwards, as the Predictor's inference network does, calls it again): the fused conv
    forward for a U-Net or PatchGAN made only of the layers it knows, else the module path (the fused norm layers
    with aten convs: the ResNet generator, or a rebuilt network holding another layer). strict: a U-Net or
    PatchGAN holding a layer the fused convs do not know is refused, naming it. tuning: the ConvTuning of the
    fused convs (default: the one `net`'s fused forward has, else a new one: fastpix.models.tuning.conv_tuning).
    Returns net.forward_path."""
    from fastpix.models.patchgan import NLayerDiscriminator, PixelDiscriminator
    from fastpix.models.unet import UnetGenerator

    fusable = isinstance(net, (UnetGenerator, NLayerDiscriminator, PixelDiscriminator))
    unknown = unsupported_layer(net) if fusable else None
    if unknown is not None and strict:
        raise ValueError(
            f"backend 'triton': layer {unknown[0]} ({unknown[1]}) of this {type(net).__name__} is not "
            "one the fused conv kernels run; use backend 'eager'"
        )
    if fusable and unknown is None:
        current = net.fused_forward
        if tuning is None:
            tuning = current.tuning if current is not None else conv_tuning()
        net.fused_forward = FusedConvs(isinstance(net, UnetGenerator), tuning)
    else:
        net.fused_forward = None
    return net.forward_path


def fused_forward_supported(net: nn.Module) -> bool:
    """True when every layer of `net` is one the fused conv path knows (see the module docstring)."""
    return unsupported_layer(net) is None


def unsupported_layer(net: nn.Module):
    """(name, module) of the first layer of `net` the fused conv path does not know, or None."""
    known = (nn.Conv2d, nn.ConvTranspose2d, nn.ReLU, nn.LeakyReLU, nn.Dropout, nn.Tanh, nn.Identity, nn.Sequential)
    from fastpix.models.patchgan import NLayerDiscriminator, PixelDiscriminator
    from fastpix.models.unet import UnetGenerator, UnetSkipConnectionBlock

    containers = (UnetGenerator, UnetSkipConnectionBlock, NLayerDiscriminator, PixelDiscriminator)
    for name, m in net.named_modules():
        if isinstance(m, containers):
            continue
        if not (isinstance(m, known) or _is_norm(m)) or type(m) is nn.SyncBatchNorm:
            return name, m
        if isinstance(m, nn.BatchNorm2d) and not m.training and (m.running_mean is None or m.running_var is None):
            return name, m
    return None


def _conv_call(conv: nn.Conv2d | nn.ConvTranspose2d, norm: Any, tanh: bool, pending: list[Pending]) -> ConvCall:
    """What this conv and the norm after it do in this forward; counts the batch as nn.BatchNorm2d does."""
    transposed = isinstance(conv, nn.ConvTranspose2d)
    if (
        conv.groups != 1
        or conv.dilation != (1, 1)
        or (transposed and conv.output_padding != (0, 0))
        or conv.stride[0] != conv.stride[1]
        or conv.padding[0] != conv.padding[1]
        or conv.kernel_size[0] != conv.kernel_size[1]
        or conv.padding_mode != "zeros"
    ):
        raise ValueError(
            f"{conv}: the fused conv kernels take groups 1, dilation 1, square kernels, equal strides "
            "and paddings, zero padding and no output padding"
        )
    # Statistics of this batch: BatchNorm in training, instance norm always.
    stats = norm is not None and (norm.training or isinstance(norm, nn.InstanceNorm2d))
    # Per-sample parameters and statistics (instance norm): this conv's norm, or its inputs' [N, C] parameters.
    instance = isinstance(norm, nn.InstanceNorm2d) or any(p.norm is not None and p.norm[0].dim() == 2 for p in pending)
    track = stats and norm.track_running_stats
    momentum = 0.0
    if stats:
        momentum = 0.0 if norm.momentum is None else norm.momentum
        if track and norm.num_batches_tracked is not None:
            norm.num_batches_tracked.add_(1)
            if norm.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
                momentum = 1.0 / float(norm.num_batches_tracked)
    return ConvCall(conv, norm, tanh, stats, track, momentum, instance)


def _with_dropout(p: Pending, prob: float) -> Pending:
    if p.dropout_p > 0:
        raise ValueError("two dropouts on one tensor are not a layer order the fused conv path supports")
    rng = torch.randint(0, 2**62, (2,), dtype=torch.int64, device=p.raw.device)
    return Pending(p.raw, p.norm, p.activation, p.slope, prob, rng)


def _compute_dtype(x):
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class FusedConvs:
    """The fused conv forward of one network, a U-Net (`unet`) or a PatchGAN's Sequential, called as the network's
    fused_forward(module, x) (the input already validated by the network). `tuning` holds its per-layer choices:
    each conv runs the fused kernel, or cuDNN where the tuning step measured that faster for the layer or the
    kernel failed."""

    def __init__(self, unet: bool, tuning: ConvTuning):
        self.unet, self.tuning = unet, tuning

    def __call__(self, module: Any, x: torch.Tensor) -> torch.Tensor:  # a U-Net, or a PatchGAN's Sequential
        x = x.to(_compute_dtype(x), memory_format=torch.channels_last)
        if self.unet:
            return self._unet_block(module.model, Pending(x))[0].materialise()
        pending, activation = self._walk(list(module), [Pending(x)])
        if activation is not None:
            raise ValueError("a network ending in an activation is not supported by the fused conv path")
        return pending[0].materialise()

    def _conv(self, pending: list[Pending], conv: nn.Conv2d | nn.ConvTranspose2d, norm: Any, tanh=False) -> Pending:
        """Run `conv` on one or two pending sources, the way this layer's choice says; the Pending output."""
        call = _conv_call(conv, norm, tanh, pending)
        key = call.key(pending)

        def fused(copies, weight, bias):
            return run_triton(call, copies, weight, bias, self.tuning)

        def eager(copies, weight, bias):
            return run_eager(call, copies, weight, bias)

        choice = self.tuning.layer_choice(
            key,
            lambda timer: measured_seconds(timer, fused, pending, conv),
            lambda timer: measured_seconds(timer, eager, pending, conv),
        )
        if choice == "triton":
            try:
                out = fused(pending, conv.weight, conv.bias)
            except Exception as exc:  # noqa: BLE001 - a kernel that fails to compile or launch: this layer on cuDNN
                choice = self.tuning.record_failure(key, exc)
        self.tuning.record(key, choice)
        if choice == "cudnn":
            out = eager(pending, conv.weight, conv.bias)
        return pending_output(call, out)

    def _walk(self, layers, pending: list[Pending]):
        """Run a list of layers (a Sequential's, or a U-Net level's between its structural parts) on `pending`."""
        i = 0
        activation = None
        while i < len(layers):
            m = layers[i]
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nxt = layers[i + 1] if i + 1 < len(layers) else None
                norm = nxt if _is_norm(nxt) else None
                tanh = isinstance(nxt, nn.Tanh)
                pending = [self._conv([p.read_by(activation) for p in pending], m, norm, tanh)]
                activation = None
                i += 2 if (norm is not None or tanh) else 1
                continue
            if isinstance(m, ACTIVATION_MODULES):
                activation = m
            elif isinstance(m, nn.Dropout):
                if m.training and m.p > 0:  # an unfused Dropout: its mask comes from a fresh counter-RNG state
                    pending = [_with_dropout(p, m.p) for p in pending]
            elif not isinstance(m, nn.Identity):
                raise ValueError(f"layer {m} is not supported by the fused conv path")
            i += 1
        return pending, activation

    def _unet_block(self, block, x: Pending) -> list[Pending]:
        """One U-Net level on Pending tensors. Returns what the parent's up conv reads: [skip, up] as two sources
        (the outermost level returns [its output])."""
        from fastpix.models.unet import UnetSkipConnectionBlock

        layers = list(block.model)
        sub = next((i for i, m in enumerate(layers) if isinstance(m, UnetSkipConnectionBlock)), None)
        if sub is None:  # innermost: [LeakyReLU, down conv, ReLU, up conv, up norm]
            up, activation = self._walk(layers, [x])
        else:
            down, activation = self._walk(layers[:sub], [x])
            if activation is not None:
                raise ValueError("an activation directly before a U-Net submodule is not supported")
            up, activation = self._walk(layers[sub + 1 :], self._unet_block(layers[sub], down[0]))
        if activation is not None:
            raise ValueError("a U-Net level ending in an activation is not supported by the fused conv path")
        return up if block.outermost else [x, up[0]]
