"""Colorization in the Predictor: colour or grey images in, the generator on their lightness, RGB out.

A colorization generator (the reference's: 1 → 2 channels) maps L/50 − 1 to ab/110 (CIE Lab, fastpix.data.lab). The
Predictor reads each image as RGB (a grey image has R = G = B), takes its L at the image's own size, runs the
generator on it like any input (resized if asked, padded, batched), brings the predicted ab back to the image's size
and joins it to the image's own L with the reference's lab2rgb: so the output keeps the input's lightness, except
where that lightness with the predicted colour lies outside the sRGB gamut (lab2rgb clips it) and for 8-bit
rounding.
"""

from __future__ import annotations

import torch

from fastpix.data.lab import AB_SCALE, L_SCALE, lab_to_rgb, lightness


def as_colour(item):
    """item as an image the Predictor reads in RGB: a 1-channel CHW tensor (grey) repeated to 3 channels; images,
    arrays and files are converted to RGB when they are read (PIL's convert, grey to R = G = B)."""
    if isinstance(item, torch.Tensor) and item.dim() == 3 and item.shape[0] == 1:
        return item.expand(3, -1, -1)
    return item


def split_lightness(rgb: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(L (1×H×W float32 in [0, 100]), the generator's input L/50 − 1) of a CHW RGB image on device: uint8, or float
    in [-1, 1] as the Predictor's float inputs are."""
    rgb = rgb.to(device, non_blocking=True)
    if rgb.dtype != torch.uint8:
        rgb = (rgb.double() + 1.0) / 2.0
    L = lightness(rgb).float()
    return L, L / L_SCALE - 1.0


def join_lightness(L: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """The RGB image (3×H×W float32 in [-1, 1], the Predictor's output range) of lightness L (1×H×W, in [0, 100])
    and the generator's output ab/110 (2×H×W, the same size)."""
    lab = torch.cat((L.double(), ab.to(L.device).double() * AB_SCALE), dim=0)
    return (lab_to_rgb(lab) * 2.0 - 1.0).float()
