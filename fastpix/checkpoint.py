"""Checkpoints: safetensors weights, a train-state file, config.json; all written atomically.

<checkpoints_dir>/<name>/
  latest_net_G.safetensors, latest_net_D.safetensors   weights (+ <epoch>_net_{G,D}.safetensors)
  latest_train_state.pt   optimizers, RNG, epoch, iteration; torch.load(weights_only=True) reads it
  config.json             the model/data/train configuration of the run
  metrics.jsonl           one JSON line per logged iteration
A reference checkpoint (<epoch>_net_G.pth, a plain state_dict) is read wherever a fastpix one is.
Every weights file records the iteration it belongs to, so a resume can refuse a set torn by a crash.
"""
from __future__ import annotations

import json
import os
import tempfile

import torch
from safetensors.torch import load_file, save_file

WEIGHT_SUFFIXES = (".safetensors", ".pth")


class CheckpointError(ValueError):
    pass


def atomic_write(path: str, write):
    """Write through a temporary file in the same folder, then rename: readers see the old file or the new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_weights(path: str, net_or_state, metadata: dict | None = None):
    """A state_dict as safetensors (.safetensors) or as the reference's torch.save'd dict (.pth), on CPU."""
    state = net_or_state.state_dict() if isinstance(net_or_state, torch.nn.Module) else net_or_state
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    if path.endswith(".pth"):
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    else:
        meta = {k: str(v) for k, v in (metadata or {}).items()}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))


def load_weights(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if path.endswith(".pth"):
            state = torch.load(path, map_location="cpu", weights_only=True)
            # Reference checkpoints saved from DataParallel carry "module."; its loader strips it too.
            return {k.removeprefix("module."): v for k, v in state.items()}
        return load_file(path)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: say which
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc})") from exc


def weights_metadata(path: str) -> dict:
    if not path.endswith(".safetensors"):
        return {}
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


def find_weights(run_dir: str, epoch: str, net: str) -> str:
    """<epoch>_net_<net>.safetensors, else the reference's .pth of the same name."""
    for suffix in WEIGHT_SUFFIXES:
        path = os.path.join(run_dir, f"{epoch}_net_{net}{suffix}")
        if os.path.isfile(path):
            return path
    raise CheckpointError(f"{run_dir}: no {epoch}_net_{net}.safetensors or {epoch}_net_{net}.pth "
                          "(is --name / --checkpoints_dir / --epoch right?)")


def load_into(net: torch.nn.Module, path: str):
    """Strict load, with an error that names the file and the mismatching keys."""
    state = load_weights(path)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit this network (check --netG/--netD/--ngf/--ndf/--norm "
                              f"or config.json): {exc}") from exc


def save_train_state(path: str, state: dict):
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_train_state(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no train state to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read train state ({exc})") from exc


def save_json(path: str, obj):
    atomic_write(path, lambda tmp: open(tmp, "w").write(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def load_json(path: str):
    with open(path) as f:
        return json.load(f)
