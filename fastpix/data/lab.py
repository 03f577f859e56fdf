"""CIE Lab as the reference's colorization converts it, in torch, so that it runs batched wherever the images are.

The reference (colorization_dataset.py, colorization_model.py) converts with scikit-image's rgb2lab and lab2rgb:
sRGB (IEC 61966-2-1) with the D65 white of the 2° observer, in float64. This module follows those functions step by
step (the same constants, thresholds and clipping, also in float64), so its values equal scikit-image's to float64
rounding; scikit-image itself is not needed at run time (tests/test_colorization.py compares the two).

The colorization data of the reference: A = L/50 − 1 (one channel, [−1, 1]) and B = ab/110 (two channels), from the
float64 Lab rounded to float32; its pictures rebuild RGB with lab2rgb from L = (A + 1)·50 and ab = B·110 (float32
arithmetic, then float64) and save lab2rgb·255 truncated to uint8. Tensors here are (..., C, H, W).
"""

from __future__ import annotations

import torch

# scikit-image's xyz_from_rgb (the sRGB primaries) and the D65 2° white point ("D65": {"2": ...}).
XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
D65_WHITE = (0.95047, 1.0, 1.08883)
L_SCALE, AB_SCALE = 50.0, 110.0  # the reference's A = L/50 − 1, B = ab/110

_CONSTANTS: dict[torch.device, dict[str, torch.Tensor]] = {}


def _constants(device) -> dict[str, torch.Tensor]:
    """The conversion's constant tensors on device, made once per device: a tensor made from Python values on a GPU
    is a copy that waits for the GPU's queue, which would stall every batch. The inverse matrix is taken in float64,
    as scikit-image's."""
    device = torch.device(device)
    if device not in _CONSTANTS:
        forward = torch.tensor(XYZ_FROM_RGB, dtype=torch.float64)
        found = {
            "xyz_from_rgb": forward,
            "rgb_from_xyz": torch.linalg.inv(forward),
            "linear_of_byte": _linear(torch.arange(256, dtype=torch.float64) * (1.0 / 255.0)),
            "white": torch.tensor(D65_WHITE, dtype=torch.float64).view(3, 1, 1),
            "L_scale": torch.tensor(L_SCALE),
            "ab_scale": torch.tensor(AB_SCALE),
        }
        _CONSTANTS[device] = {name: t.to(device) for name, t in found.items()}
    return _CONSTANTS[device]


def _linear(x: torch.Tensor) -> torch.Tensor:
    """sRGB's transfer function undone (IEC 61966-2-1), as scikit-image's rgb2xyz."""
    return torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)


def _apply(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """matrix applied to the colour vector of every pixel of x (..., 3, H, W)."""
    return torch.einsum("ij,...jhw->...ihw", matrix, x)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB (..., 3, H, W), uint8 or float in [0, 1], to CIE Lab in float64 (L in [0, 100]): skimage.color.rgb2lab."""
    if rgb.shape[-3] != 3:
        raise ValueError(f"rgb_to_lab takes (..., 3, H, W) images, not shape {tuple(rgb.shape)}")
    constants = _constants(rgb.device)
    if rgb.dtype == torch.uint8:  # scikit-image's img_as_float (· 1/255) then _linear, looked up: the same values
        table = constants["linear_of_byte"]
        linear = table.index_select(0, rgb.reshape(-1).int()).view(rgb.shape)
    else:
        linear = _linear(rgb.double())
    xyz = _apply(constants["xyz_from_rgb"], linear) / constants["white"]
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(-3)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab (..., 3, H, W) to sRGB float64 in [0, 1]: skimage.color.lab2rgb, colours outside the sRGB gamut
    clipped channel by channel as it does (a negative Z to 0 first)."""
    if lab.shape[-3] != 3:
        raise ValueError(f"lab_to_rgb takes (..., 3, H, W) images, not shape {tuple(lab.shape)}")
    L, a, b = lab.double().unbind(-3)
    constants = _constants(lab.device)
    fy = (L + 16.0) / 116.0
    f = torch.stack((a / 500.0 + fy, fy, (fy - b / 200.0).clamp(min=0)), dim=-3)
    xyz = torch.where(f > 0.2068966, f**3, (f - 16.0 / 116.0) / 7.787) * constants["white"]
    linear = _apply(constants["rgb_from_xyz"], xyz)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=0) ** (1 / 2.4) - 0.055, linear * 12.92)
    return rgb.clamp(0.0, 1.0)


def colorization_pair(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's colorization data of sRGB images (..., 3, H, W): (A, B) float32, A = L/50 − 1 (..., 1, H, W)
    and B = ab/110 (..., 2, H, W), from the float64 Lab rounded to float32 as its data set does."""
    lab = rgb_to_lab(rgb).float()
    constants = _constants(lab.device)
    # Divided by float32 tensors, not Python scalars: CUDA divides by a scalar as a multiplication by its
    # reciprocal, which can differ from the CPU's true division in the last bit.
    return lab[..., :1, :, :] / constants["L_scale"] - 1.0, lab[..., 1:, :, :] / constants["ab_scale"]


def colorization_rgb(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """sRGB float64 in [0, 1] of the colorization data A (L/50 − 1) and B (ab/110): the reference's lab2rgb, its
    scaling back in float32 arithmetic as it does it."""
    lab = torch.cat(((A.float() + 1.0) * L_SCALE, B.float() * AB_SCALE), dim=-3)
    return lab_to_rgb(lab)


def to_uint8(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] to uint8 as the reference saves its colorization pictures: ·255, truncated."""
    return (rgb.double() * 255.0).to(torch.uint8)


def lightness(rgb: torch.Tensor) -> torch.Tensor:
    """L of sRGB images (..., 3, H, W) in float64, (..., 1, H, W) in [0, 100]."""
    return rgb_to_lab(rgb)[..., :1, :, :]
