"""Inference copies of a generator with a chosen BatchNorm and dropout behaviour (docs/design.md, "Norm and dropout
at inference"). The checkpoint's module is never changed: `inference_network` deep-copies it and swaps modules.

norm_mode
  instance  every BatchNorm normalises each sample by its own H×W statistics (biased variance, the layer's eps and
            affine): an image's output does not depend on its batch neighbours, and at batch 1 this is exactly
            train-mode BatchNorm, the paper's test protocol.
  batch     train-mode BatchNorm over the whole batch (the paper's literal protocol), running statistics untouched.
  running   eval-mode BatchNorm folded into the preceding conv / transposed conv, so no normalisation runs at all.
InstanceNorm2d layers (norm 'instance') and Identity (norm 'none') are left as they are: all modes agree for them.

backend='triton' networks (fastpix/models/fused.py) hold fused norm layers that carry their activation (and their
Dropout's p). Each keeps running fused, with its activation, as the mode's twin (`_fused_inference_twin`):
  instance  InstanceNormAct2d with the BatchNorm's affine (instance_norm_act: per-sample statistics);
  batch     BatchNormAct2d without running statistics (batch_norm_act over the batch);
  running   the BatchNormAct2d itself in eval mode. It is not folded: the fused conv path (fused_convs.py) applies
            the running statistics while its consumer conv loads the tensor, so the BatchNorm costs no pass of its
            own either way, and a fold would leave a bare activation that the fused conv path cannot place.
With dropout on, a layer that carried dropout becomes Sequential(twin, SeededDropout): the masks come from the same
per-sample generators in the same order as on the eager path, so both backends drop the same elements. Dropout on
runs the module-by-module path (aten convs, fused norm kernels); with dropout off every mode runs entirely on the
fused conv kernels (instance mode with per-sample statistics in the conv epilogue).
"""

from __future__ import annotations

import contextlib
import copy
import sys
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from fastpix.config import INFERENCE_NORM_MODES as NORM_MODES
from fastpix.errors import ConfigError
from fastpix.models.fused_convs import set_forward_path
from fastpix.models.network import Network


class _FrozenAffine(nn.Module):
    """A BatchNorm's eps and affine, copied and frozen: what every inference replacement of a BatchNorm keeps."""

    def __init__(self, bn: _BatchNorm):
        super().__init__()
        self.eps = bn.eps
        self.weight = None if bn.weight is None else nn.Parameter(bn.weight.detach().clone(), requires_grad=False)
        self.bias = None if bn.bias is None else nn.Parameter(bn.bias.detach().clone(), requires_grad=False)


class SampleNorm(_FrozenAffine):
    """A BatchNorm's affine applied after per-sample normalisation over H×W."""

    def forward(self, x):
        # Statistics in fp32 whatever the autocast dtype: a bf16 variance over a large image loses digits.
        x32 = x.float()
        var, mean = torch.var_mean(x32, dim=(2, 3), keepdim=True, correction=0)
        y = (x32 - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)


class BatchStatsNorm(_FrozenAffine):
    """Train-mode BatchNorm over the batch that never updates running statistics (it has none to update)."""

    def forward(self, x):
        return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)


class SeededDropout(nn.Module):
    """Dropout whose mask for sample i comes from generators[i] alone, so it does not depend on the batch.

    `seeded_dropout` gives the layers their generators (one per sample, seeded by (seed, image index)) for one
    forward; the layers of that forward draw from them in a fixed order, so every layer gets its own mask.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.generators: list[torch.Generator] = []

    def forward(self, x):
        if len(self.generators) != x.shape[0]:
            raise RuntimeError(f"SeededDropout has {len(self.generators)} generators for a batch of {x.shape[0]}")
        draws = torch.stack([torch.rand(x.shape[1:], generator=g, device=x.device) for g in self.generators])
        keep = (draws >= self.p).to(x.dtype)
        return x * keep * (1.0 / (1.0 - self.p))


def sample_generator(seed: int, index: int, device) -> torch.Generator:
    """A generator for image `index` of a request seeded `seed`; SeedSequence mixes the pair into a 63-bit seed."""
    mixed = int(np.random.SeedSequence([seed % 2**64, index]).generate_state(1, np.uint64)[0]) >> 1
    return torch.Generator(device=device).manual_seed(mixed)


def _fold_into(conv: nn.Conv2d | nn.ConvTranspose2d, bn: _BatchNorm):
    """conv followed by eval-mode bn, as one conv: scale each output channel, shift its bias (in fp64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ConfigError(
            f"--norm-mode running: {bn} has no running statistics to fold (track_running_stats=False); "
            "use --norm-mode instance or batch"
        )
    var, mean = bn.running_var.double(), bn.running_mean.double()
    weight = torch.ones_like(var) if bn.weight is None else bn.weight.double()
    shift = torch.zeros_like(var) if bn.bias is None else bn.bias.double()
    scale = weight / torch.sqrt(var + bn.eps)
    # Conv2d weights are [out, in, k, k]; ConvTranspose2d weights are [in, out, k, k].
    out_dim = 1 if isinstance(conv, nn.ConvTranspose2d) else 0
    if conv.groups != 1:
        raise ValueError(f"{conv}: folding BatchNorm into a grouped convolution is not supported")
    shape = [1] * conv.weight.dim()
    shape[out_dim] = -1
    old_bias = torch.zeros_like(var) if conv.bias is None else conv.bias.double()
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter((conv.weight.double() * scale.view(shape)).to(dtype), requires_grad=False)
    conv.bias = nn.Parameter((old_bias * scale + shift - mean * scale).to(dtype), requires_grad=False)


def _fold_batchnorms(net: nn.Module, keep: tuple = ()):
    """Fold every BatchNorm but those of the types in `keep` (the fused layers) into the conv before it."""
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        for i, layer in enumerate(seq):
            if isinstance(layer, _BatchNorm) and not isinstance(layer, keep):
                previous = seq[i - 1] if i > 0 else None
                if not isinstance(previous, (nn.Conv2d, nn.ConvTranspose2d)):
                    raise ValueError(
                        f"norm_mode 'running': a BatchNorm at {i} of a Sequential is not preceded by a "
                        "conv to fold it into"
                    )
                _fold_into(previous, layer)
                seq[i] = nn.Identity()
    leftover = [name for name, m in net.named_modules() if isinstance(m, _BatchNorm) and not isinstance(m, keep)]
    if leftover:
        raise ValueError(f"norm_mode 'running': BatchNorm outside a Sequential cannot be folded: {leftover}")


def _swap(net: nn.Module, replace):
    """Replace each submodule for which replace(module) returns a module (in place on `net`)."""
    for name, child in net.named_children():
        new = replace(child)
        if new is not None:
            setattr(net, name, new)
        else:
            _swap(child, replace)


def _fused_norm_types() -> tuple:
    """(BatchNormAct2d, InstanceNormAct2d) once the fused kernels are loaded, else (). A network can hold a fused
    layer only after its module was imported, and importing it here would fix Triton's interpreted-or-compiled
    choice too early (models.use_triton_interpreter) or fail on an install without a working Triton."""
    kernels = sys.modules.get("fastpix.models.norm_act")
    return () if kernels is None else (kernels.BatchNormAct2d, kernels.InstanceNormAct2d)


def _fused_inference_twin(layer: Any, norm_mode: str, dropout: bool) -> nn.Module:
    """The inference form of a fused norm layer (see the module docstring): its activation, no dropout of its own,
    then SeededDropout when dropout is on and the layer carried dropout."""
    from fastpix.models.norm_act import BatchNormAct2d, InstanceNormAct2d

    device = next(layer.buffers()).device  # every fused layer holds an rng_state buffer
    act = dict(activation=layer.activation, slope=layer.slope)
    if isinstance(layer, InstanceNormAct2d) or norm_mode == "running":
        if isinstance(layer, BatchNormAct2d) and layer.running_mean is None:
            raise ConfigError(
                f"--norm-mode running: {layer} has no running statistics (track_running_stats=False); "
                "use --norm-mode instance or batch"
            )
        twin = copy.deepcopy(layer).eval()
        twin.dropout_p = 0.0
    else:
        if norm_mode == "instance":
            twin = InstanceNormAct2d(layer.num_features, layer.eps, affine=layer.affine, **act)
        else:
            twin = BatchNormAct2d(layer.num_features, layer.eps, affine=layer.affine, track_running_stats=False, **act)
            # Without running statistics, train and eval mode alike normalise over the batch and update nothing;
            # train mode is what routes the layer through the fused conv path's statistics epilogue (fused_convs.py).
            twin.train()
        if layer.affine:
            twin.weight = nn.Parameter(layer.weight.detach().clone())
            twin.bias = nn.Parameter(layer.bias.detach().clone())
    twin = twin.to(device)
    if dropout and layer.dropout_p > 0:
        return nn.Sequential(twin, SeededDropout(layer.dropout_p))
    return twin


def inference_network(generator: nn.Module, norm_mode: str = "instance", dropout: bool = False) -> nn.Module:
    """A copy of `generator` in eval mode with BatchNorm per norm_mode and dropout off or per-sample seeded."""
    if norm_mode not in NORM_MODES:
        raise ConfigError(f"--norm-mode {norm_mode!r} is not one of {', '.join(NORM_MODES)}")
    net = copy.deepcopy(generator).eval()
    fused = _fused_norm_types()
    if fused:
        _swap(net, lambda m: _fused_inference_twin(m, norm_mode, dropout) if isinstance(m, fused) else None)
    if norm_mode == "running":
        _fold_batchnorms(net, keep=fused)
    else:
        norm_cls = SampleNorm if norm_mode == "instance" else BatchStatsNorm
        _swap(net, lambda m: norm_cls(m) if isinstance(m, _BatchNorm) and not isinstance(m, fused) else None)
    _swap(net, lambda m: (SeededDropout(m.p) if dropout else nn.Identity()) if isinstance(m, nn.Dropout) else None)
    for p in net.parameters():
        p.requires_grad_(False)
    if getattr(net, "fused_forward", None) is not None:  # the swapped layers decide the copy's forward once
        set_forward_path(cast(Network, net))  # a U-Net or PatchGAN: only a Network has fused_forward
    return net


@contextlib.contextmanager
def seeded_dropout(net: nn.Module, generators: list[torch.Generator]):
    """Within the block, every SeededDropout of `net` draws from the per-sample generators (one list, shared); after
    it they hold none again, so that no later forward draws from generators meant for another batch."""
    layers = [m for m in net.modules() if isinstance(m, SeededDropout)]
    for m in layers:
        m.generators = generators
    try:
        yield
    finally:
        for m in layers:
            m.generators = []


def has_dropout(net: nn.Module) -> bool:
    return any(isinstance(m, SeededDropout) for m in net.modules())


def uses_triton(net: nn.Module) -> bool:
    """Whether `net` runs Triton kernels (built with backend 'triton'): it holds fused norm layers or has its fused
    conv forward, read from what the network is rather than from an attribute set on it by its builder."""
    fused = _fused_norm_types()
    return getattr(net, "fused_forward", None) is not None or any(isinstance(m, fused) for m in net.modules())
