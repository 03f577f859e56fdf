"""An item as the pictures people look at: the results page, eval's scores and the training samples, named as the
reference names its visuals.

pix2pix shows real_A, fake_B and real_B: the tensors themselves ((x + 1)/2·255 truncated, grey tiled to RGB).
Colorization's tensors are Lab (A = L/50 − 1, B = ab/110), so it shows, in the reference's order, real_A (its L as
grey), real_B_rgb and fake_B_rgb: lab2rgb of the real L with the real and with the predicted ab, ·255 truncated.
"""

from __future__ import annotations

import numpy as np
import torch

from fastpix.data.lab import colorization_rgb, to_uint8
from fastpix.data.transforms import to_image_array

LABELS = {"pix2pix": ("real_A", "fake_B", "real_B"), "colorization": ("real_A", "real_B_rgb", "fake_B_rgb")}
SCORED = {"pix2pix": ("fake_B", "real_B"), "colorization": ("fake_B_rgb", "real_B_rgb")}  # (output, target)


def colorization_image(real_A: torch.Tensor, ab: torch.Tensor) -> np.ndarray:
    """HWC uint8 RGB of one item's L (real_A, 1×H×W) with ab (2×H×W), as the reference's colorization visuals."""
    return to_uint8(colorization_rgb(real_A.detach().cpu(), ab.detach().cpu())).permute(1, 2, 0).numpy()


def pictures(real_A: torch.Tensor, fake_B: torch.Tensor, real_B: torch.Tensor, kind: str = "pix2pix") -> dict:
    """{label: HWC uint8 picture} of one item (CHW tensors as the data set and the generator give them), in the
    order of LABELS[kind]; kind is a model kind ("pix2pix" or "colorization")."""
    if kind == "colorization":
        found = {
            "real_A": to_image_array(real_A),
            "real_B_rgb": colorization_image(real_A, real_B),
            "fake_B_rgb": colorization_image(real_A, fake_B),
        }
    else:
        found = {"real_A": to_image_array(real_A), "fake_B": to_image_array(fake_B), "real_B": to_image_array(real_B)}
    return {label: found[label] for label in LABELS[kind]}
