"""A generator's architecture from its state_dict (a reference .pth carries no configuration: its keys and shapes
are all there is), the architecture a checkpoint is loaded with, and building that generator with its weights."""

from __future__ import annotations

from typing import Any

import torch

from fastpix.config import MODEL_BACKENDS
from fastpix.errors import CheckpointError, ConfigError
from fastpix.store.weights import load_into

ARCH_FIELDS = ("netG", "ngf", "norm", "input_nc", "output_nc", "no_dropout")
REQUIRED_ARCH = ("netG", "ngf", "norm", "input_nc", "output_nc")


def _unet_depth(state: dict) -> int:
    """num_downs: the deepest block, following 'model.model.1.model.' then 'model.3.model.' down the keys."""
    depth = 1
    for key in state:
        parts = key.split(".")[2:]
        level, i = 1, 0
        while i + 1 < len(parts) and parts[i] == ("1" if level == 1 else "3") and parts[i + 1] == "model":
            level, i = level + 1, i + 2
        depth = max(depth, level)
    return depth


def infer_architecture(state: dict) -> dict:
    """What the keys and shapes of a generator state_dict tell: netG, ngf, norm, input_nc, output_nc (those found),
    and no_dropout for a ResNet (a U-Net's Dropout leaves no trace in its keys)."""
    found: dict[str, Any] = {}
    first = state.get("model.model.0.weight")
    resnet_first = state.get("model.1.weight")
    if first is not None and first.dim() == 4:
        found.update(ngf=first.shape[0], input_nc=first.shape[1], netG=f"unet_{2 ** _unet_depth(state)}")
        if "model.model.3.weight" in state:
            found["output_nc"] = state["model.model.3.weight"].shape[1]  # ConvTranspose2d: [in, out, k, k]
        first_bias = "model.model.0.bias"
    elif (
        resnet_first is not None
        and resnet_first.dim() == 4
        and tuple(resnet_first.shape[-2:]) == (7, 7)
        and any(".conv_block." in k for k in state)
    ):
        found.update(ngf=resnet_first.shape[0], input_nc=resnet_first.shape[1])
        n_blocks = len({k.split(".")[1] for k in state if ".conv_block." in k})
        if n_blocks in (6, 9):
            found["netG"] = f"resnet_{n_blocks}blocks"
        # A block's Dropout (no weights) shifts its second conv from index 5 to 6: here dropout does show.
        found["no_dropout"] = not any(k.endswith(".conv_block.6.weight") and state[k].dim() == 4 for k in state)
        top_convs = [k for k in state if k.count(".") == 2 and k.endswith(".weight") and state[k].dim() == 4]
        found["output_nc"] = state[max(top_convs, key=lambda k: int(k.split(".")[1]))].shape[0]
        first_bias = "model.1.bias"
    else:
        return found
    # The reference gives convs a bias only under InstanceNorm (conv_has_bias), and BatchNorm brings running stats.
    if any(k.endswith("running_mean") for k in state):
        found["norm"] = "batch"
    else:
        found["norm"] = "instance" if first_bias in state else "none"
    return found


def resolve_architecture(recorded: dict, given: dict, source: str) -> dict:
    """The architecture a checkpoint records (config.json's, or what its keys tell), overridden by `given`
    (keyword arguments or flags; None values are not given)."""
    unknown = sorted(set(given) - set(ARCH_FIELDS))
    if unknown:
        raise TypeError(f"unknown architecture arguments {unknown}; accepted: {', '.join(ARCH_FIELDS)}")
    values = {"no_dropout": False}  # the reference's pix2pix default; Dropout has no weights to tell
    values.update({k: v for k, v in recorded.items() if k in ARCH_FIELDS})
    values.update({k: v for k, v in given.items() if v is not None})
    missing = [k for k in REQUIRED_ARCH if values.get(k) is None]
    if missing:
        raise CheckpointError(
            f"{source}: cannot infer {', '.join(missing)} from the checkpoint's keys and shapes; "
            f"pass {', '.join(f'{k}=...' for k in missing)} (e.g. netG='unet_256', ngf=64, "
            "norm='batch', input_nc=3, output_nc=3)"
        )
    return values


def build_generator(state: dict, arch: dict, source: str, backend=None) -> torch.nn.Module:
    """The generator of architecture `arch` (resolve_architecture's) holding `state`, read from `source`."""
    from fastpix.models import define_G

    if backend not in (None, *MODEL_BACKENDS):
        raise ConfigError(
            f"--backend {backend!r} is not one of {', '.join(MODEL_BACKENDS)} for a trained generator "
            "(compile is a training backend)"
        )
    G = define_G(
        arch["input_nc"],
        arch["output_nc"],
        arch["ngf"],
        arch["netG"],
        arch["norm"],
        not arch["no_dropout"],
        backend=backend,
    )
    load_into(G, source, state, network=" ".join(f"{k}={arch[k]}" for k in REQUIRED_ARCH))
    return G
