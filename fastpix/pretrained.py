"""The reference's pretrained pix2pix generators in one command, as its scripts/download_pix2pix_model.sh gets them:
<mirror>/models-pytorch/<name>.pth -> <checkpoints_dir>/<name>_pretrained/latest_net_G.pth.

A downloaded file is kept only once it has proved to be what it claims: read with torch.load(weights_only=True)
(which unpickles tensors and plain containers and refuses anything else, so a pickle that would run code is refused
before any of it runs) as a state dict of tensors, loaded strictly into the expected architecture (built on the meta
device: keys and shapes are checked, no memory is used), floating-point and finite. Otherwise it is removed and
nothing is left. The folder then is what the reference's script leaves, so `fastpix test --name <name>_pretrained`,
`fastpix predict --checkpoint checkpoints/<name>_pretrained`, serve and the Python API take it as they are.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from fastpix.config import PRETRAINED_MODELS, ModelDownloadConfig
from fastpix.download import Fetched, exclusive, fetch, mirror_base
from fastpix.errors import CheckpointError, ConfigError
from fastpix.files import TMP_PREFIX
from fastpix.models import define_G
from fastpix.store.weights import load_weights

WEIGHTS = "latest_net_G.pth"


@dataclass(frozen=True)
class Architecture:
    """A generator as define_G builds it, and its parameter count (the check that the registry is right)."""

    netG: str = "unet_256"
    ngf: int = 64
    norm: str = "batch"
    input_nc: int = 3
    output_nc: int = 3
    parameters: int = 54_413_955

    def build(self) -> torch.nn.Module:
        with torch.device("meta"):
            return define_G(self.input_nc, self.output_nc, self.ngf, self.netG, self.norm, use_dropout=True)

    def describe(self) -> str:
        return f"{self.netG}, ngf {self.ngf}, {self.norm} norm, {self.input_nc}->{self.output_nc} channels"


# Every pretrained pix2pix generator of the reference is the paper's unet_256 (ngf 64, batch norm, dropout).
ARCHITECTURES = {name: Architecture() for name in PRETRAINED_MODELS}


@dataclass
class ModelDownload:
    name: str
    path: str  # <checkpoints_dir>/<name>_pretrained/latest_net_G.pth
    url: str
    dataset: str
    direction: str
    present: bool = False  # it was there already and was left alone
    fetched: Fetched | None = None


def model_url(name: str, mirror: str | None = None) -> str:
    return f"{mirror_base(mirror)}/models-pytorch/{name}.pth"


def mismatch(state: dict, expected: dict) -> str | None:
    """What keeps state from loading strictly where expected's keys and shapes are, in a few words; None if nothing."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} keys missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} shapes differ, e.g. {k}: {list(state[k].shape)} where {list(expected[k].shape)} is expected"
        )
    return "; ".join(parts) or None


def check_generator(path: str, arch: Architecture, source: str) -> dict:
    """The state dict in path, if it is a generator of arch; else a CheckpointError naming source and why."""
    try:
        state = load_weights(path)
    except CheckpointError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise CheckpointError(f"{source}: not a PyTorch state dict of tensors ({reason})") from exc
    net = arch.build()
    problem = mismatch(state, net.state_dict())
    if problem:
        raise CheckpointError(f"{source}: not a {arch.describe()} generator ({problem})")
    net.load_state_dict(state, strict=True, assign=True)  # meta tensors: assigned, not copied
    bad = [
        k
        for k, v in state.items()
        if not k.endswith("num_batches_tracked") and (not v.is_floating_point() or not bool(torch.isfinite(v).all()))
    ]
    if bad:
        raise CheckpointError(f"{source}: {bad[0]} and {len(bad) - 1} more tensors are not finite floating-point")
    return state


def download_model(cfg: ModelDownloadConfig, progress: bool = True) -> ModelDownload:
    """<checkpoints_dir>/<name>_pretrained/latest_net_G.pth from the mirror, checked (check_generator) before it is
    kept; unless it is there already (cfg.force: replace it)."""
    if cfg.name not in ARCHITECTURES:
        raise ConfigError(f"{cfg.name!r} is not a pretrained pix2pix model: {', '.join(ARCHITECTURES)}")
    folder = os.path.join(cfg.checkpoints_dir, f"{cfg.name}_pretrained")
    target, url = os.path.join(folder, WEIGHTS), model_url(cfg.name, cfg.mirror)
    dataset, direction = PRETRAINED_MODELS[cfg.name]
    result = ModelDownload(cfg.name, target, url, dataset, direction)
    if os.path.lexists(target) and not cfg.force:
        result.present = True
        return result
    made = [d for d in (cfg.checkpoints_dir, folder) if not os.path.isdir(d)]  # removed again on failure
    by_hand = f"download it by hand to {target}"
    try:
        with exclusive(folder, WEIGHTS, CheckpointError):
            candidate = os.path.join(folder, f"{TMP_PREFIX}check-{WEIGHTS}")  # exclusive() removes it after a kill
            result.fetched = fetch(
                url, candidate, by_hand, cfg.retries, cfg.read_timeout_s, progress, f"{cfg.name}.pth"
            )
            try:
                check_generator(candidate, ARCHITECTURES[cfg.name], url)
                os.replace(candidate, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(candidate)
    except BaseException:
        for empty in reversed(made):  # no empty <name>_pretrained folder that would look like a model
            with contextlib.suppress(OSError):
                os.rmdir(empty)
        raise
    return result
