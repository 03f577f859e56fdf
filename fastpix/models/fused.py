"""backend='triton': the eager module tree with every norm + activation (+ dropout) pair run by one fused kernel.

`fuse_norm_activations(net)` rewrites a network built by define_G/define_D in place: a norm layer becomes
BatchNormAct2d / InstanceNormAct2d (subclasses of nn.BatchNorm2d / nn.InstanceNorm2d with the same parameters and
buffers), and the activation and Dropout it absorbs become nn.Identity, which holds no state. Module indices,
parameter names and state_dict keys are therefore those of the eager network (and of the reference). Convolutions
stay aten/cuDNN (their fusion is issue #5).

Where the fused activation comes from, per network:
- PatchGAN (basic, n_layers, pixel) and ResNet: a norm followed directly by its LeakyReLU / ReLU (and Dropout).
- U-Net: each level's Sequential is [LeakyReLU, down conv, down norm, inner block, ReLU, up conv, up norm, Dropout]
  and the block returns cat([input, Sequential(input)]). The down norm's output d goes two ways: into the inner
  block, whose first layer is LeakyReLU, and into the inner block's skip, to which this level applies ReLU after
  the concat. The down norm fuses that LeakyReLU (the inner block's LeakyReLU becomes Identity), so the skip
  carries LeakyReLU(d) — as in the reference, whose in-place LeakyReLU mutates the skip — and this level's ReLU
  then gives ReLU(LeakyReLU(d)) = ReLU(d), with gradient ReLU'(LeakyReLU(d))·LeakyReLU'(d) = ReLU'(d) everywhere
  (at d = 0 both are 0, as torch defines them): values and gradients equal the eager network's exactly.
  The up norm fuses its Dropout and the ReLU the parent applies after the concat (ReLU commutes with dropout's
  non-negative scaling, and a ReLU applied twice is one ReLU). The parent's ReLU stays in place: it is what the
  skip half needs; on the up half it changes nothing.
Only exact nn.BatchNorm2d / nn.InstanceNorm2d (without running stats) are fused; norm 'none' (Identity) leaves
the activations eager.
"""

from __future__ import annotations

import torch
import torch.nn as nn

LEAKY_SLOPE = 0.2  # pix2pix's LeakyReLU slope (the reference's networks)


def _fusable(norm: nn.Module) -> bool:
    if type(norm) is nn.BatchNorm2d:
        return True
    return type(norm) is nn.InstanceNorm2d and not norm.track_running_stats


def _fused(norm: nn.Module, activation: str, slope: float = LEAKY_SLOPE, dropout_p: float = 0.0) -> nn.Module:
    """The fused twin of `norm` with the same state (parameters, running statistics, training flag)."""
    from fastpix.models.norm_act import BatchNormAct2d, InstanceNormAct2d

    cls = BatchNormAct2d if isinstance(norm, nn.BatchNorm2d) else InstanceNormAct2d
    fused = cls(
        norm.num_features,
        norm.eps,
        norm.momentum,
        norm.affine,
        norm.track_running_stats,
        activation=activation,
        slope=slope,
        dropout_p=dropout_p,
    )
    fused.load_state_dict(norm.state_dict())
    device = next(iter(norm.state_dict().values()), torch.empty(0)).device
    return fused.to(device).train(norm.training)


def _activation_of(module: nn.Module) -> tuple[str, float] | None:
    """(kind, slope) of an activation module the kernels can fuse (those classes exactly), else None."""
    if type(module) is nn.ReLU:
        return "relu", 0.0
    if isinstance(module, nn.LeakyReLU) and type(module) is nn.LeakyReLU:
        return "leaky_relu", module.negative_slope
    return None


def _fuse_sequential(seq: nn.Sequential):
    """norm → activation [→ Dropout] (or norm → Dropout) inside one Sequential: the PatchGAN and ResNet case."""
    i = 0
    while i < len(seq):
        if not _fusable(seq[i]):
            i += 1
            continue
        j = i + 1
        activation = _activation_of(seq[j]) if j < len(seq) else None
        kind, slope = activation if activation else ("none", LEAKY_SLOPE)
        if activation:
            j += 1
        after = seq[j] if j < len(seq) else None
        p = after.p if isinstance(after, nn.Dropout) and type(after) is nn.Dropout else 0.0
        seq[i] = _fused(seq[i], kind, slope, p)
        for k in range(i + 1, j + (p > 0)):
            seq[k] = nn.Identity()
        i = j + (p > 0)


def _fuse_unet_block(block, input_activated: bool):
    """One U-Net level (see the module docstring); input_activated: the parent's down norm already applied this
    level's LeakyReLU to its input."""
    seq = block.model
    if block.outermost:  # [down conv, inner block, ReLU, up conv, Tanh]: no norm; the down conv's output is raw
        _fuse_unet_block(seq[1], input_activated=False)
        return
    if input_activated:
        seq[0] = nn.Identity()
    if block.innermost:  # [LeakyReLU, down conv, ReLU, up conv, up norm]: no down norm
        if _fusable(seq[4]):
            seq[4] = _fused(seq[4], "relu")
        return
    down_fused = _fusable(seq[2])
    if down_fused:  # takes over the inner block's leading LeakyReLU
        seq[2] = _fused(seq[2], "leaky_relu", seq[3].model[0].negative_slope)
    _fuse_unet_block(seq[3], input_activated=down_fused)
    if _fusable(seq[6]):
        p = seq[7].p if len(seq) > 7 else 0.0
        seq[6] = _fused(seq[6], "relu", dropout_p=p)
        if len(seq) > 7:
            seq[7] = nn.Identity()


def fuse_norm_activations(net: nn.Module) -> nn.Module:
    """Rewrite `net` (from define_G / define_D) in place for backend='triton' and return it.

    Building consumes no random numbers (the fused modules draw their dropout seeds on first use), so
    with one seed both backends get the same weights, and torch.manual_seed before a run decides the masks.
    """
    from fastpix.models.unet import UnetGenerator

    if isinstance(net, UnetGenerator):
        _fuse_unet_block(net.model, input_activated=False)
    else:
        for module in list(net.modules()):
            if isinstance(module, nn.Sequential):
                _fuse_sequential(module)
    return net


def dropout_rng_states(net: nn.Module) -> dict:
    """{module name: [seed, offset] (CPU int64)} of the fused modules whose dropout RNG has been seeded.

    A training checkpoint keeps these so that a resumed run draws the masks an uninterrupted run would. Unseeded
    modules are left out rather than seeded here: seeding draws from torch's generator, and a save must not change
    what the run draws next.
    """
    return {name: m.rng_state.cpu().clone() for name, m in net.named_modules() if getattr(m, "_rng_seeded", False)}


def load_dropout_rng_states(net: nn.Module, states: dict):
    modules = dict(net.named_modules())
    for name, state in states.items():
        if name not in modules or not hasattr(modules[name], "_rng_seeded"):
            raise ValueError(
                f"the checkpoint holds a dropout RNG state for {name!r}, which is not a fused module "
                "of this network (was it trained with another --backend or --netG?)"
            )
        module = modules[name]
        module._rng_state.copy_(state)
        module._rng_seeded = True
