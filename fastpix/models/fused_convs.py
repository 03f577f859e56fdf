"""backend='triton' forward on the fused conv kernels (kernels/conv_bn_act.py): BatchNorm never materialised.

The module tree stays the eager one (so state_dicts are unchanged); `unet_forward` and `sequential_forward` walk
it and run every conv and ConvTranspose as one fused Triton kernel. What flows between layers is a `Pending`
tensor: a conv's raw output plus what its consumers must apply while loading it — the BatchNorm (mean,
k = γ·rstd, β), the activation and dropout. A BatchNorm layer in training mode turns into the statistics its conv's
epilogue computes (running statistics and num_batches_tracked updated as nn.BatchNorm2d does); in eval mode into
its running statistics. The U-Net's up conv reads skip and up as two sources: no concat is written.

Layers are recognised by type: Conv2d, ConvTranspose2d, BatchNorm2d and InstanceNorm2d without running statistics
(and their fused subclasses BatchNormAct2d / InstanceNormAct2d, whose activation and dropout they carry; instance
norm's statistics are per sample), ReLU, LeakyReLU, Dropout, Tanh, Identity. `set_forward_path` gives a
network made of these only this forward, once, at build time; `tune_layers` makes each layer's choice (fused
Triton block or cuDNN) before the first iteration, so that no forward measures anything.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATION_MODULES = (nn.ReLU, nn.LeakyReLU)
_choices = None  # while tune_layers runs: {layer key: the choice made}


@dataclass
class Pending:
    """A conv's raw output and what its consumer applies on load: dropout(act((raw − mean)·k + β))."""
    raw: torch.Tensor
    norm: tuple | None = None
    activation: str = "none"
    slope: float = 0.2
    dropout_p: float = 0.0
    rng: torch.Tensor | None = None

    def read_by(self, activation: nn.Module | None):
        """This tensor as a consumer reads it after `activation` (a ReLU/LeakyReLU module, or None)."""
        if activation is None:
            return self
        kind = "relu" if isinstance(activation, nn.ReLU) else "leaky_relu"
        if self.activation == "none":
            slope = activation.negative_slope if kind == "leaky_relu" else self.slope
            return Pending(self.raw, self.norm, kind, slope, self.dropout_p, self.rng)
        if kind == "relu":  # ReLU∘ReLU = ReLU∘LeakyReLU = ReLU (dropout's scaling is non-negative)
            return Pending(self.raw, self.norm, "relu", self.slope, self.dropout_p, self.rng)
        if self.activation == "relu":  # LeakyReLU∘ReLU = ReLU
            return self
        raise ValueError("LeakyReLU applied twice is not a layer order the fused conv path supports")

    def materialise(self):
        """The tensor itself (only needed at a network's end; pix2pix networks end in a raw conv or Tanh)."""
        if self.norm is None and self.activation == "none" and self.dropout_p == 0.0:
            return self.raw
        raise ValueError("a network ending in a norm or activation is not supported by the fused conv path")


def _is_norm(m):
    """A norm layer the fused convs absorb: BatchNorm2d, or InstanceNorm2d without running statistics."""
    return isinstance(m, nn.BatchNorm2d) or (isinstance(m, nn.InstanceNorm2d) and not m.track_running_stats)


def set_forward_path(net: nn.Module, strict: bool = False) -> str:
    """Fix `net`'s forward once for backend 'triton' (define_G / define_D call it after fusing the norms, strict;
    code that swaps layers afterwards, as the Predictor's inference network does, calls it again): the fused conv
    forward for a U-Net or PatchGAN made only of the layers it knows, else the module path (the fused norm layers
    with aten convs: the ResNet generator, or a rebuilt network holding another layer). strict: a U-Net or
    PatchGAN holding a layer the fused convs do not know is refused, naming it. Returns net.forward_path."""
    from fastpix.models.patchgan import NLayerDiscriminator, PixelDiscriminator
    from fastpix.models.unet import UnetGenerator

    fused = None
    if isinstance(net, UnetGenerator):
        fused = unet_forward
    elif isinstance(net, (NLayerDiscriminator, PixelDiscriminator)):
        fused = sequential_forward
    unknown = unsupported_layer(net) if fused is not None else None
    if unknown is not None and strict:
        raise ValueError(f"backend 'triton': layer {unknown[0]} ({unknown[1]}) of this {type(net).__name__} is not "
                         "one the fused conv kernels run; use backend 'eager'")
    net.fused_forward = fused if fused is not None and unknown is None else None
    net.forward_path = "fused convs" if net.fused_forward is not None else "fused norms, aten convs"
    return net.forward_path


def fused_forward_supported(net: nn.Module) -> bool:
    """True when every layer of `net` is one the fused conv path knows (see the module docstring)."""
    return unsupported_layer(net) is None


def unsupported_layer(net: nn.Module):
    """(name, module) of the first layer of `net` the fused conv path does not know, or None."""
    known = (nn.Conv2d, nn.ConvTranspose2d, nn.ReLU, nn.LeakyReLU, nn.Dropout, nn.Tanh, nn.Identity,
             nn.Sequential)
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


def _layer(pending: list[Pending], conv: nn.Module, norm: nn.Module | None, tanh: bool):
    """The ConvLayer (kernels/conv_layers.py) this conv is, for the measured cuDNN-fallback choice."""
    from fastpix.kernels.conv_layers import ConvLayer

    reads = tuple("bn_act" if p.norm is not None else ("act" if p.activation != "none" else "image")
                  for p in pending)
    out = "bn" if _batch_stats(norm) else "tanh" if tanh else "bias" if conv.bias is not None else "raw"
    raw = pending[0].raw
    return ConvLayer(type(conv).__name__, isinstance(conv, nn.ConvTranspose2d), tuple(p.raw.shape[1] for p in pending),
                     conv.out_channels, raw.shape[2], conv.stride[0], reads, pending[0].activation,
                     len(pending) > 1 and pending[1].dropout_p > 0, out, width=raw.shape[3],
                     kernel=conv.kernel_size[0], padding=conv.padding[0],
                     norm="instance" if isinstance(norm, nn.InstanceNorm2d) else "batch")


def _batch_stats(norm) -> bool:
    """Whether `norm` normalises with statistics of this batch: BatchNorm in training, instance norm always."""
    return norm is not None and (norm.training or isinstance(norm, nn.InstanceNorm2d))


def _materialise(p: Pending) -> torch.Tensor:
    """The tensor a Pending stands for, computed with torch ops as the fused prologue does (fp32, then the
    tensor's dtype); the dropout mask is the one the kernels draw for the same [seed, offset]."""
    from fastpix.kernels.batch_norm_act import dropout_mask

    z = p.raw
    if p.norm is not None:  # [C] (batch) or [N, C] (instance) parameters
        mean, k, beta = (t[..., None, None] for t in p.norm)
        z = ((z.float() - mean) * k + beta).to(p.raw.dtype)
    if p.activation == "relu":
        z = F.relu(z)
    elif p.activation == "leaky_relu":
        z = F.leaky_relu(z, p.slope)
    if p.dropout_p > 0:
        z = z * dropout_mask(z.shape, p.rng, p.dropout_p).to(z.dtype) / (1.0 - p.dropout_p)
    return z


def _conv_eager(pending, conv, transposed, norm, factor, track):
    """The cuDNN fallback of one layer: materialised input, aten conv and, with `norm` (training), BatchNorm
    statistics by torch ops (running statistics updated when `track`). Returns what conv_bn_act would: the
    output, or (output, mean, rstd)."""
    x = torch.cat([_materialise(p) for p in pending], 1) if len(pending) > 1 else _materialise(pending[0])
    weight = conv.weight.to(x.dtype)
    bias = None if conv.bias is None else conv.bias.to(x.dtype)
    op = F.conv_transpose2d if transposed else F.conv2d
    y = op(x, weight, bias, conv.stride, conv.padding)
    if norm is None:
        return y
    dims = (2, 3) if isinstance(norm, nn.InstanceNorm2d) else (0, 2, 3)
    var, mean = torch.var_mean(y.float(), dim=dims, correction=0)
    if track:
        n = y.numel() // y.shape[1]
        with torch.no_grad():  # nn.BatchNorm2d's update: momentum `factor`, unbiased variance
            norm.running_mean.lerp_(mean.to(norm.running_mean.dtype), factor)
            norm.running_var.lerp_((var * n / max(n - 1, 1)).to(norm.running_var.dtype), factor)
    return y, mean, torch.rsqrt(var + norm.eps)


def _conv(pending: list[Pending], conv: nn.Module, norm: nn.Module | None, tanh=False):
    """Run `conv` on one or two pending sources — the fused kernel, or cuDNN where tune_layers measured that faster
    for this layer or the kernel failed — and return the Pending output (with `norm` folded in)."""
    from fastpix.kernels.conv_layers import time_block
    from fastpix.kernels.conv_tuning import choice_label, layer_choice, record_failure

    transposed = isinstance(conv, nn.ConvTranspose2d)
    if conv.groups != 1 or conv.dilation != (1, 1) or (transposed and conv.output_padding != (0, 0)) \
            or conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1] \
            or conv.kernel_size[0] != conv.kernel_size[1] or conv.padding_mode != "zeros":
        raise ValueError(f"{conv}: the fused conv kernels take groups 1, dilation 1, square kernels, equal strides "
                         "and paddings, zero padding and no output padding")
    stats = _batch_stats(norm)
    # Per-sample parameters and statistics (instance norm): this conv's norm, or its inputs' [N, C] parameters.
    instance = isinstance(norm, nn.InstanceNorm2d) or any(p.norm is not None and p.norm[0].dim() == 2
                                                          for p in pending)
    track = stats and norm.track_running_stats
    factor = 0.0
    if stats:
        factor = 0.0 if norm.momentum is None else norm.momentum
        if track and norm.num_batches_tracked is not None:
            norm.num_batches_tracked.add_(1)
            if norm.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
                factor = 1.0 / float(norm.num_batches_tracked)
    layer = _layer(pending, conv, norm, tanh)
    raw = pending[0].raw
    key = layer.key(raw.shape[0], raw.dtype)
    choice = layer_choice(key, lambda: time_block(layer, raw.shape[0], raw.dtype, raw.device, "triton"),
                          lambda: time_block(layer, raw.shape[0], raw.dtype, raw.device, "cudnn"))
    if choice == "triton":
        try:
            out = _conv_triton(pending, conv, transposed, norm, stats, track, factor, instance, tanh)
        except Exception as exc:  # noqa: BLE001 - a kernel that fails to compile or launch: this layer on cuDNN
            choice = record_failure(key, exc)
    if _choices is not None:
        _choices[key] = choice_label(key, choice)
    if choice == "cudnn":
        out = _conv_eager(pending, conv, transposed, norm if stats else None, factor, track)
        if tanh:
            out = torch.tanh(out)
    return _pending_output(out, norm, stats)


def _conv_triton(pending, conv, transposed, norm, stats, track, factor, instance, tanh):
    from fastpix.kernels.conv_bn_act import conv_bn_act

    first, second = pending[0], (pending[1] if len(pending) > 1 else None)
    return conv_bn_act(
        first.raw, conv.weight, conv.bias, conv.stride[0], conv.padding[0], transposed=transposed,
        norm=first.norm, activation=first.activation, dropout_p=first.dropout_p, rng=first.rng,
        x2=None if second is None else second.raw, norm2=None if second is None else second.norm,
        activation2="none" if second is None else second.activation,
        dropout_p2=0.0 if second is None else second.dropout_p, rng2=None if second is None else second.rng,
        slope=first.slope, tanh=tanh, stats=stats, running_mean=norm.running_mean if track else None,
        running_var=norm.running_var if track else None, momentum=factor,
        eps=norm.eps if stats else 1e-5, per_sample=instance)


def _pending_output(out, norm, stats):
    """The Pending a conv's consumer reads: its output with `norm` (statistics or running ones) folded in."""
    from fastpix.kernels.batch_norm_act import snapshot_and_advance
    from fastpix.kernels.conv_bn_act import batch_norm_prologue

    if norm is None:
        return Pending(out)
    if stats:
        raw, mean, rstd = out
    else:
        raw, mean, rstd = out, norm.running_mean, torch.rsqrt(norm.running_var + norm.eps)
    result = Pending(raw, batch_norm_prologue(mean, rstd, norm.weight, norm.bias))
    activation = getattr(norm, "activation", "none")  # BatchNormAct2d carries its activation and dropout
    if activation != "none":
        result.activation, result.slope = activation, norm.slope
    p = getattr(norm, "dropout_p", 0.0) if norm.training else 0.0
    if p > 0:
        result.dropout_p, result.rng = p, snapshot_and_advance(norm.rng_state, raw, p)
    return result


def _with_dropout(p: Pending, prob: float) -> Pending:
    if p.dropout_p > 0:
        raise ValueError("two dropouts on one tensor are not a layer order the fused conv path supports")
    rng = torch.randint(0, 2 ** 62, (2,), dtype=torch.int64, device=p.raw.device)
    return Pending(p.raw, p.norm, p.activation, p.slope, prob, rng)


def _walk(layers, pending: list[Pending]):
    """Run a list of layers (a Sequential's, or a U-Net level's between its structural parts) on `pending`."""
    i = 0
    activation = None
    while i < len(layers):
        m = layers[i]
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            norm = nxt if _is_norm(nxt) else None
            tanh = isinstance(nxt, nn.Tanh)
            pending = [_conv([p.read_by(activation) for p in pending], m, norm, tanh)]
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


def _unet_block(block, x: Pending) -> list[Pending]:
    """One U-Net level on Pending tensors. Returns what the parent's up conv reads: [skip, up] as two sources
    (the outermost level returns [its output])."""
    from fastpix.models.unet import UnetSkipConnectionBlock

    layers = list(block.model)
    sub = next((i for i, m in enumerate(layers) if isinstance(m, UnetSkipConnectionBlock)), None)
    if sub is None:  # innermost: [LeakyReLU, down conv, ReLU, up conv, up norm]
        up, activation = _walk(layers, [x])
    else:
        down, activation = _walk(layers[:sub], [x])
        if activation is not None:
            raise ValueError("an activation directly before a U-Net submodule is not supported")
        up, activation = _walk(layers[sub + 1:], _unet_block(layers[sub], down[0]))
    if activation is not None:
        raise ValueError("a U-Net level ending in an activation is not supported by the fused conv path")
    return up if block.outermost else [x, up[0]]


def _compute_dtype(x):
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def unet_forward(net, x: torch.Tensor) -> torch.Tensor:
    """UnetGenerator.forward on the fused conv kernels (input already validated by the caller)."""
    x = x.to(_compute_dtype(x), memory_format=torch.channels_last)
    return _unet_block(net.model, Pending(x))[0].materialise()


def sequential_forward(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A PatchGAN (a Sequential of the known layers) on the fused conv kernels."""
    x = x.to(_compute_dtype(x), memory_format=torch.channels_last)
    pending, activation = _walk(list(seq), [Pending(x)])
    if activation is not None:
        raise ValueError("a network ending in an activation is not supported by the fused conv path")
    return pending[0].materialise()


def tune_layers(net: nn.Module, example_input: torch.Tensor) -> dict:
    """The explicit tuning step of backend 'triton', before the first iteration: one forward (+ backward when `net`
    is training) on `example_input`, which has the iteration's shape, under the caller's autocast, with
    measurements allowed (kernels/conv_tuning.py): each layer's choice (the fused Triton block or cuDNN, whichever
    runs its forward + backward faster on this GPU) and the kernels' block sizes are measured and cached now, never
    inside a later forward. A layer whose Triton kernels fail to compile or launch goes to cuDNN with a warning.
    Parameters, buffers (running statistics, dropout counters), gradients and torch's RNG are restored: the step
    changes no result. On a CPU (the interpreter) nothing is measured; the forward still checks every layer.

    Returns net.layer_choices, {layer key: 'triton' | 'cudnn' | 'cudnn (triton failed: ...)'}; {} for a network on
    the module path."""
    global _choices
    from fastpix.kernels.conv_tuning import tuning

    net = getattr(net, "_orig_mod", net)  # torch.compile's wrapper (a DDP wrapper is not tuned: its backward syncs)
    net.layer_choices = {}
    if getattr(net, "fused_forward", None) is None:
        return net.layer_choices
    buffers = {name: b.detach().clone() for name, b in net.named_buffers()}
    seeded = {name: m._rng_seeded for name, m in net.named_modules() if hasattr(m, "_rng_seeded")}
    grads = {name: None if p.grad is None else p.grad.detach().clone() for name, p in net.named_parameters()}
    devices = [example_input.device] if example_input.device.type == "cuda" else []
    previous, _choices = _choices, net.layer_choices
    try:
        with torch.random.fork_rng(devices=devices), tuning(), torch.inference_mode(False):
            backward = net.training and torch.is_grad_enabled()
            with torch.set_grad_enabled(backward):
                out = net(example_input.clone())
            if backward and out.requires_grad:
                out.float().sum().backward()
    finally:
        _choices = previous
        with torch.no_grad():
            for name, b in net.named_buffers():
                b.copy_(buffers[name])
        for name, m in net.named_modules():
            if name in seeded:
                m._rng_seeded = seeded[name]
        for name, p in net.named_parameters():  # in place where a gradient existed: a CUDA graph may hold it
            if grads[name] is None or p.grad is None:
                p.grad = grads[name]
            else:
                p.grad.copy_(grads[name])
    return net.layer_choices
