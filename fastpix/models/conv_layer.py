"""One conv of backend 'triton''s fused forward (fastpix/models/fused_convs.py), run either way: as the fused Triton
kernel (kernels/conv_bn_act.py) or on cuDNN/aten, and timed both ways for the per-layer choice.

What flows between layers is a `Pending` tensor: a conv's raw output plus what its consumers must apply while
loading it — the BatchNorm (mean, k = γ·rstd, β), the activation and dropout. A `ConvCall` is one conv with the norm
(or Tanh) that follows it; `run_triton` and `run_eager` compute the same thing from the same Pending inputs and
`pending_output` turns either result into the Pending its consumer reads.

`timed_step` is the layer's own measurement (forward + backward on copies of its real inputs), so the per-layer
choice times exactly what the network runs; nothing here comes from the benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


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
            slope = activation.negative_slope if isinstance(activation, nn.LeakyReLU) else self.slope
            return Pending(self.raw, self.norm, kind, slope, self.dropout_p, self.rng)
        if kind == "relu":  # ReLU∘ReLU = ReLU∘LeakyReLU = ReLU (dropout's scaling is non-negative)
            return Pending(self.raw, self.norm, "relu", self.slope, self.dropout_p, self.rng)
        if self.activation == "relu":  # LeakyReLU∘ReLU = ReLU
            return self
        raise ValueError("LeakyReLU applied twice is not a layer order the fused conv path supports")

    @property
    def read(self) -> str:
        """How a conv reads it: 'bn_act' (a norm, then the activation), 'act' (the activation only) or 'image'."""
        return "bn_act" if self.norm is not None else ("act" if self.activation != "none" else "image")

    def materialise(self):
        """The tensor itself (only needed at a network's end; pix2pix networks end in a raw conv or Tanh)."""
        if self.norm is None and self.activation == "none" and self.dropout_p == 0.0:
            return self.raw
        raise ValueError("a network ending in a norm or activation is not supported by the fused conv path")


@dataclass(frozen=True)
class ConvCall:
    """One conv (Conv2d or ConvTranspose2d) and what follows it: `norm`, the BatchNorm or InstanceNorm it feeds
    (None: none), `stats` when that norm normalises with this batch's statistics (`track`: and updates its running
    ones with `momentum`), `instance` when statistics and the inputs' parameters are per sample, `tanh` for G's
    output layer."""

    conv: nn.Conv2d | nn.ConvTranspose2d
    # a BatchNorm2d or InstanceNorm2d (or their fused twins, which add activation, slope and dropout), or None;
    # Any, as torch types the running statistics optional while `track` and `stats` say when they are there
    norm: Any
    tanh: bool
    stats: bool
    track: bool
    momentum: float
    instance: bool

    @property
    def transposed(self) -> bool:
        return isinstance(self.conv, nn.ConvTranspose2d)

    def key(self, pending: list[Pending]) -> str:
        """This layer's identity for the cached per-layer choice: geometry, input shapes, dtype, how the inputs are
        read and what the epilogue does."""
        conv, raw = self.conv, pending[0].raw
        out = "bn" if self.stats else "tanh" if self.tanh else "bias" if conv.bias is not None else "raw"
        dropout = len(pending) > 1 and pending[1].dropout_p > 0
        return (
            f"{'convT' if self.transposed else 'conv'} k{conv.kernel_size[0]}s{conv.stride[0]}p{conv.padding[0]} "
            f"{raw.shape[0]}x{'+'.join(str(p.raw.shape[1]) for p in pending)}x{raw.shape[2]}x{raw.shape[3]} -> "
            f"{conv.out_channels} {str(raw.dtype)[6:]} reads={','.join(p.read for p in pending)} "
            f"act={pending[0].activation} dropout={int(dropout)} out={out}"
            f"{' instance' if isinstance(self.norm, nn.InstanceNorm2d) else ''}"
        )


def run_triton(call: ConvCall, pending: list[Pending], weight, bias, tuning=None):
    """The fused kernel: conv_bn_act on the raw sources with their prologues; returns its output, or (output,
    mean, rstd) with statistics. tuning: the network's ConvTuning (the kernels' block sizes)."""
    from fastpix.kernels.conv_bn_act import conv_bn_act

    first, second = pending[0], (pending[1] if len(pending) > 1 else None)
    norm = call.norm
    return conv_bn_act(
        first.raw,
        weight,
        bias,
        call.conv.stride[0],
        call.conv.padding[0],
        transposed=call.transposed,
        norm=first.norm,
        activation=first.activation,
        dropout_p=first.dropout_p,
        rng=first.rng,
        x2=None if second is None else second.raw,
        norm2=None if second is None else second.norm,
        activation2="none" if second is None else second.activation,
        dropout_p2=0.0 if second is None else second.dropout_p,
        rng2=None if second is None else second.rng,
        slope=first.slope,
        tanh=call.tanh,
        stats=call.stats,
        running_mean=norm.running_mean if call.track else None,
        running_var=norm.running_var if call.track else None,
        momentum=call.momentum,
        eps=norm.eps if call.stats else 1e-5,
        per_sample=call.instance,
        tuning=tuning,
    )


def materialise(p: Pending) -> torch.Tensor:
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


def run_eager(call: ConvCall, pending: list[Pending], weight, bias):
    """The cuDNN fallback: materialised input, aten conv, then Tanh or, with statistics, BatchNorm statistics by
    torch ops (running statistics updated when tracked). Returns what run_triton does."""
    x = torch.cat([materialise(p) for p in pending], 1) if len(pending) > 1 else materialise(pending[0])
    weight = weight.to(x.dtype)
    bias = None if bias is None else bias.to(x.dtype)
    op = F.conv_transpose2d if call.transposed else F.conv2d
    y = op(x, weight, bias, call.conv.stride, call.conv.padding)  # type: ignore[arg-type]  # a tuple: _conv_call checks
    if call.tanh:
        return torch.tanh(y)
    if not call.stats:
        return y
    norm = call.norm
    dims = (2, 3) if isinstance(norm, nn.InstanceNorm2d) else (0, 2, 3)
    var, mean = torch.var_mean(y.float(), dim=dims, correction=0)
    if call.track:
        n = y.numel() // y.shape[1]
        with torch.no_grad():  # nn.BatchNorm2d's update: momentum, unbiased variance
            norm.running_mean.lerp_(mean.to(norm.running_mean.dtype), call.momentum)
            norm.running_var.lerp_((var * n / max(n - 1, 1)).to(norm.running_var.dtype), call.momentum)
    return y, mean, torch.rsqrt(var + norm.eps)


def pending_output(call: ConvCall, out) -> Pending:
    """The Pending a conv's consumer reads: its output with the norm (statistics or running ones) folded in."""
    from fastpix.kernels.batch_norm_act import snapshot_and_advance
    from fastpix.kernels.conv_bn_act import batch_norm_prologue

    norm = call.norm
    if norm is None:
        return Pending(out)
    if call.stats:
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


def timed_step(run, pending: list[Pending], weight, bias):
    """A zero-argument step running one layer's forward + backward (`run`: run_triton or run_eager, with fixed
    random gradients for every output) on copies of its inputs and parameters, for the per-layer choice. As in the
    network, a source read as an image gets no gradient; the norms' means get none either (each producer's
    statistics are the producer's work). Call it with autograd on and autocast off (see `measured_seconds`)."""

    def leaf(t, grad=True):
        return t.detach().clone().requires_grad_(grad)

    copies = [
        Pending(
            leaf(p.raw, p.read != "image"),
            None if p.norm is None else (leaf(p.norm[0], False), leaf(p.norm[1]), leaf(p.norm[2])),
            p.activation,
            p.slope,
            p.dropout_p,
            p.rng,
        )
        for p in pending
    ]
    weight, bias = leaf(weight), None if bias is None else leaf(bias)

    def outputs():
        out = run(copies, weight, bias)
        return list(out) if isinstance(out, tuple) else [out]

    grads = [torch.randn_like(o) for o in outputs()]
    return lambda: torch.autograd.backward(outputs(), grads)


def measured_seconds(timer, run, pending: list[Pending], conv: nn.Module) -> float:
    """timer(timed_step(...)), measured with autograd on and autocast off whatever the caller's context (the
    tuning step may run under no_grad, inference_mode or autocast). The running statistics a tracked norm updates
    while measured are restored by the tuning step."""
    device_type = pending[0].raw.device.type
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device_type, enabled=False):
        return timer(timed_step(run, pending, conv.weight, conv.bias))
