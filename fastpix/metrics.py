"""Per-image quality metrics for translations, on [0, 1] images (data range 1.0).

Every metric accepts, for both `output` and `target`:
  * a float torch tensor in [-1, 1] (the generator's range), shaped (N, C, H, W) or (C, H, W);
  * a uint8 numpy array, shaped (H, W), (H, W, C) or (N, H, W, C).
A batched input gives a tensor of N values, a single image a 0-dim tensor (so `float(metric(a, b))` works).
Arithmetic is float64, on the input tensor's device, so the numbers match scikit-image to ~1e-10.
Values outside [-1, 1] are not clamped: a metric should not hide an out-of-range output.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SIGMA = 1.5
# skimage's gaussian_weights=True uses truncate=3.5: radius int(3.5 * 1.5 + 0.5) = 5, an 11-tap window.
RADIUS = int(3.5 * SIGMA + 0.5)
FLAT_ENERGY = 1e-20


def to_unit_float(img, dtype=torch.float64) -> torch.Tensor:
    """[-1, 1] float tensor or uint8 numpy HWC image(s) -> [0, 1] tensor, CHW (or NCHW for a batch)."""
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise TypeError(f"numpy images must be uint8 HWC, got {img.dtype}")
        t = torch.tensor(img, dtype=dtype) / 255.0  # a copy: PIL-backed arrays are read-only
        if t.ndim == 2:
            return t.unsqueeze(0)
        if t.ndim in (3, 4):
            return t.movedim(-1, -3)
        raise ValueError(f"expected a uint8 HW, HWC or NHWC array, got shape {img.shape}")
    if not torch.is_tensor(img) or not img.is_floating_point():
        raise TypeError("expected a float tensor in [-1, 1] or a uint8 numpy array")
    if img.ndim not in (3, 4):
        raise ValueError(f"expected a (C, H, W) or (N, C, H, W) tensor, got shape {tuple(img.shape)}")
    return (img.to(dtype) + 1) / 2


def _pair(output, target):
    """Both images as (N, C, H, W) [0, 1] float64 on one device, and whether the input was a single image."""
    x, y = to_unit_float(output), to_unit_float(target)
    single = x.ndim == 3 and y.ndim == 3
    x, y = (t.unsqueeze(0) if t.ndim == 3 else t for t in (x, y))
    if x.shape != y.shape:
        raise ValueError(f"output and target shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    device = output.device if torch.is_tensor(output) else target.device if torch.is_tensor(target) else "cpu"
    return x.to(device), y.to(device), single


def _per_image(values: torch.Tensor, single: bool) -> torch.Tensor:
    return values[0] if single else values


def l1(output, target) -> torch.Tensor:
    """Mean absolute error per image on the [0, 1] scale (half the error on the [-1, 1] scale)."""
    x, y, single = _pair(output, target)
    return _per_image((x - y).abs().mean(dim=(1, 2, 3)), single)


def psnr(output, target, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, 10·log10(data_range² / MSE) in dB; +inf for identical images."""
    x, y, single = _pair(output, target)
    mse = (x - y).square().mean(dim=(1, 2, 3))
    # MSE 0 divides to +inf, which is the honest value; summarize() leaves infs out of the mean.
    return _per_image(10 * torch.log10(data_range**2 / mse), single)


def _gaussian_blur_valid(t: torch.Tensor) -> torch.Tensor:
    """σ 1.5, 11-tap separable Gaussian over each channel of (N, C, H, W), keeping only the valid region
    (H - 10, W - 10): exactly the pixels skimage keeps after cropping the window radius from each border,
    so its padding mode never matters."""
    n, c, h, w = t.shape
    if min(h, w) < 2 * RADIUS + 1:
        raise ValueError(f"images must be at least {2 * RADIUS + 1}×{2 * RADIUS + 1}, got {h}×{w}")
    taps = torch.arange(-RADIUS, RADIUS + 1, dtype=t.dtype, device=t.device)
    g = torch.exp(-0.5 * (taps / SIGMA) ** 2)
    g = g / g.sum()
    t = t.reshape(n * c, 1, h, w)
    t = F.conv2d(t, g.view(1, 1, -1, 1))
    t = F.conv2d(t, g.view(1, 1, 1, -1))
    return t.reshape(n, c, h - 2 * RADIUS, w - 2 * RADIUS)


def ssim(output, target, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004), mean over channels.

    Equals skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range, channel_axis=-1): Gaussian window σ 1.5 with 11 taps,
    K1 0.01, K2 0.03, population (co)variances, averaged over the region 5 pixels in from every border.
    Images must be at least 11×11.
    """
    x, y, single = _pair(output, target)
    n = x.shape[0]
    mu_x, mu_y, xx, yy, xy = _gaussian_blur_valid(torch.cat([x, y, x * x, y * y, x * y])).split(n)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    # Every channel has the same number of valid pixels, so one mean is the mean of per-channel SSIMs.
    return _per_image(s.mean(dim=(1, 2, 3)), single)


def high_frequency_ratio(output, target) -> torch.Tensor:
    """Sharpness: high-frequency energy of the output divided by the target's, per image.

    High-frequency energy of an image = mean over channels and pixels of (image - Gaussian-blurred image)²,
    with the SSIM window (σ 1.5, 11 taps) and over its valid region (no border effects). 1 means as much
    fine detail as the target; a blurry (L1-only) output scores well below 1; noise or ringing can exceed 1.
    A target without any high-frequency energy (a flat image) gives 1 if the output is flat too, else +inf.
    """
    x, y, single = _pair(output, target)
    n, c, h, w = x.shape
    both = torch.cat([x, y])
    residual = both[..., RADIUS : h - RADIUS, RADIUS : w - RADIUS] - _gaussian_blur_valid(both)
    energy = residual.square().mean(dim=(1, 2, 3))
    # A flat image's blur differs from it only by float64 rounding (energy ~1e-32); one uint8 step of detail
    # anywhere in a 4096² image is still ~1e-12, so below FLAT_ENERGY an image is flat.
    e_out, e_tgt = torch.where(energy > FLAT_ENERGY, energy, 0.0).split(n)
    ratio = torch.where(e_tgt > 0, e_out / e_tgt.clamp_min(FLAT_ENERGY), torch.where(e_out > 0, math.inf, 1.0))
    return _per_image(ratio, single)


def summarize(values) -> dict:
    """Mean, std (population, ddof 0), min, max over per-image values, leaving ±inf out.

    `n` counts every value, `n_inf` the infinite ones (a PSNR of identical images) that were left out;
    with no finite value, mean/std/min/max are nan. NaN values are kept, so they show up as nan.
    """
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    finite = v[~np.isinf(v)]
    stats = (
        {
            "mean": float(finite.mean()),
            "std": float(finite.std()),
            "min": float(finite.min()),
            "max": float(finite.max()),
        }
        if finite.size
        else dict.fromkeys(("mean", "std", "min", "max"), math.nan)
    )
    return {**stats, "n": int(v.size), "n_inf": int(v.size - finite.size)}
