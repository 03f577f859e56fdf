"""The Predictor's images on the way in and out: reading what a caller gives, padding to the generator's multiple and
cropping back, converting the result to what the caller asked for.

Images are reflect-padded to the size the generator needs (a multiple of 2**num_downs for a U-Net, of 4 for a
ResNet), run, and cropped back. Padding is split evenly between the two sides; where it exceeds what one reflection
can give (pad >= side), several reflections are chained, and a side of 1 pixel is replicated instead. Outputs
convert to uint8 as the reference saves them.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fastpix.data.decode import decode_image
from fastpix.data.transforms import BICUBIC, to_image_array

OUTPUT_TYPES = ("pil", "np", "pt")


def padded_size(h: int, w: int, multiple: int) -> tuple[int, int]:
    return -(-h // multiple) * multiple, -(-w // multiple) * multiple


def _pad_offsets(h, w, size):
    return (size[0] - h) // 2, (size[1] - w) // 2


def pad_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Reflect-pad a (N)CHW tensor to size, centred; chained reflections for pads >= the side, replicate at side 1."""
    h, w = x.shape[-2:]
    top, left = _pad_offsets(h, w, size)
    bottom, right = size[0] - h - top, size[1] - w - left
    while left or right or top or bottom:
        h, w = x.shape[-2:]
        if (w == 1 and (left or right)) or (h == 1 and (top or bottom)):
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        step = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = left - step[0], right - step[1], top - step[2], bottom - step[3]
    return x


def crop_from(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    top, left = _pad_offsets(h, w, y.shape[-2:])
    return y[..., top : top + h, left : left + w]


def resize_tensor(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if tuple(t.shape[-2:]) == (h, w):
        return t
    return F.interpolate(t[None], size=(h, w), mode="bicubic", align_corners=False, antialias=True)[0].clamp(-1, 1)


def load_input(item, input_nc: int, resize=None):
    """An image as (CHW tensor, (h, w) before any resize): uint8 for images, arrays and paths (normalised to
    [-1, 1] on the device, by to_network_input), float in [-1, 1] for float tensors. Files are read through the
    decoding facade (fastpix.data.decode): its DecodeError names the file."""
    mode = "L" if input_nc == 1 else "RGB"
    if isinstance(item, (str, os.PathLike)):
        item = decode_image(item, mode)
    if isinstance(item, torch.Tensor) and item.dtype == torch.uint8:
        if item.dim() != 3 or item.shape[0] != input_nc:
            raise ValueError(
                f"uint8 tensor images must be CHW with {input_nc} channels; got shape "
                f"{tuple(item.shape)} (pass a batch as a list)"
            )
        if resize is None:
            return item.detach(), tuple(item.shape[-2:])
        item = item.detach().cpu().permute(1, 2, 0).numpy()
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3):
            raise ValueError(f"numpy images must be HWC (or HW) uint8; got {item.dtype} of shape {item.shape}")
        channels = 1 if item.ndim == 2 else item.shape[2]
        if channels == input_nc and resize is None:  # already what the network takes: no PIL round trip
            hwc = np.ascontiguousarray(item).reshape(item.shape[0], item.shape[1], channels)
            if not hwc.flags.writeable:  # torch wants a writable array; nothing here writes to it, but copy anyway
                hwc = hwc.copy()
            return torch.from_numpy(hwc).permute(2, 0, 1), item.shape[:2]
        item = Image.fromarray(item[:, :, 0] if channels == 1 and item.ndim == 3 else item)
    if isinstance(item, Image.Image):
        original = (item.height, item.width)
        img = item.convert(mode)
        if resize is not None:
            img = img.resize(tuple(resize), BICUBIC)
        arr = np.asarray(img, dtype=np.uint8).reshape(img.height, img.width, input_nc)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), original
    if isinstance(item, torch.Tensor):
        if item.dim() != 3 or item.shape[0] != input_nc:
            raise ValueError(
                f"tensor images must be CHW with {input_nc} channels in [-1, 1]; got shape "
                f"{tuple(item.shape)} (pass a batch as a list)"
            )
        t = item.detach().float()
        original = (t.shape[-2], t.shape[-1])
        return (t if resize is None else resize_tensor(t, resize[1], resize[0])), original
    raise TypeError(
        f"cannot read an image from {type(item).__name__}: give a PIL image, an HWC uint8 array, a CHW "
        "tensor (uint8, or float in [-1, 1]) or a file path"
    )


def to_network_input(t: torch.Tensor, device) -> torch.Tensor:
    """load_input's tensor on the device in [-1, 1]: uint8 crosses to the device as bytes and is normalised there,
    with to_tensor's operation order (x / 255 - 0.5) / 0.5, so the values equal the CPU chain's bit for bit."""
    t = t.to(device, non_blocking=True)
    if t.dtype == torch.uint8:
        return t.float().div_(255).sub_(0.5).div_(0.5)
    return t


def convert_output(t: torch.Tensor, output_type: str):
    if output_type == "pt":
        return t
    arr = to_image_array(t)
    return arr if output_type == "np" else Image.fromarray(arr)
