"""Networks the user supplies as TorchScript files: the feature network of FID/KID, the FCN-score's segmenter.
fastpix never downloads one."""

from __future__ import annotations

import os

import torch

from fastpix.errors import CheckpointError
from fastpix.store.weights import unreadable


def load_torchscript(path: str, flag: str, what: str, device: torch.device) -> torch.nn.Module:
    """The TorchScript network at `path` (given with `flag`), in eval mode on `device`."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{flag} {path}: no such file")
    try:
        net = torch.jit.load(path, map_location=device)
    except Exception as exc:
        raise CheckpointError(f"{flag} {path}: not a TorchScript {what} ({unreadable(exc)})") from exc
    return net.eval()
