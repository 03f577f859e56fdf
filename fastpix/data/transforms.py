"""The reference's transform chain (PIL), with the random crop/flip drawn per sample from (seed, epoch, index).

Order, as in the reference: grayscale → resize (bicubic, each half to load_size², aspect not kept) or scale_width →
crop (one offset shared by A and B) → make-power-of-4 (preprocess none) → flip (shared) → [0, 1] → (x − 0.5)/0.5.
Drawing the crop/flip from (seed, epoch, index) rather than a process-global RNG makes a sample's augmentation
independent of worker count and order, and makes resumed runs exact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

BICUBIC = Image.Resampling.BICUBIC


@dataclass(frozen=True)
class CropFlip:
    x: int
    y: int
    flip: bool


def sample_crop_flip(
    preprocess: str, load_size: int, crop_size: int, size: tuple[int, int], rng: random.Random
) -> CropFlip:
    """The reference's get_params: the crop offset range follows the size after resizing."""
    w, h = size
    new_w, new_h = w, h
    if preprocess == "resize_and_crop":
        new_w = new_h = load_size
    elif preprocess == "scale_width_and_crop":
        new_w, new_h = load_size, load_size * h // w
    x = rng.randint(0, max(0, new_w - crop_size))
    y = rng.randint(0, max(0, new_h - crop_size))
    return CropFlip(x, y, rng.random() > 0.5)


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    return random.Random(f"{seed}:{epoch}:{index}")


def _scale_width(img, target_width, crop_size):
    ow, oh = img.size
    if ow == target_width and oh >= crop_size:
        return img
    return img.resize((target_width, int(max(target_width * oh / ow, crop_size))), BICUBIC)


def _make_power_2(img, base=4):
    ow, oh = img.size
    w, h = int(round(ow / base) * base), int(round(oh / base) * base)
    return img if (w, h) == (ow, oh) else img.resize((w, h), BICUBIC)


def transform_image(
    img: Image.Image, params: CropFlip, preprocess: str, load_size: int, crop_size: int, flip: bool, grayscale: bool
) -> Image.Image:
    """Apply the reference chain up to (not including) the conversion to a tensor."""
    if grayscale:
        img = img.convert("L")
    if "resize" in preprocess:
        img = img.resize((load_size, load_size), BICUBIC)
    elif "scale_width" in preprocess:
        img = _scale_width(img, load_size, crop_size)
    if "crop" in preprocess:
        ow, oh = img.size
        if ow > crop_size or oh > crop_size:
            img = img.crop((params.x, params.y, params.x + crop_size, params.y + crop_size))
    if preprocess == "none":
        img = _make_power_2(img)
    if flip and params.flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def to_tensor(img: Image.Image) -> torch.Tensor:
    """uint8 HWC → float CHW in [−1, 1], with torchvision's ToTensor + Normalize(0.5, 0.5) operation order."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255)
    return t.sub_(0.5).div_(0.5)


def to_image_array(t: torch.Tensor) -> np.ndarray:
    """CHW in [−1, 1] → HWC uint8 as the reference saves it: (x + 1)/2·255 truncated, grey tiled to RGB."""
    arr = t.detach().float().cpu().numpy()
    if arr.shape[0] == 1:
        arr = np.tile(arr, (3, 1, 1))
    return ((np.transpose(arr, (1, 2, 0)) + 1) / 2.0 * 255.0).astype(np.uint8)
