import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fastpix import metrics


def structured(h, w, c, rng):
    """A smooth gradient with a few edges plus noise, as uint8 HWC (HW when c == 0)."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.5 * xx + 0.3 * yy + 0.2 * ((xx * 7).astype(int) % 2)
    planes = [np.roll(base, k * 3, axis=1) for k in range(max(c, 1))]
    img = np.stack(planes, -1) + rng.normal(0, 0.05, (h, w, max(c, 1)))
    img = np.clip(img * 255, 0, 255).astype(np.uint8)
    return img[..., 0] if c == 0 else img


def blurred(img, sigma):
    axes = (sigma, sigma, 0) if img.ndim == 3 else sigma
    return np.clip(gaussian_filter(img.astype(np.float64), axes), 0, 255).round().astype(np.uint8)


def to_minus1_1(img):
    """uint8 HWC/HW -> [-1, 1] float CHW tensor, as the data pipeline would give."""
    t = torch.from_numpy(img).double()
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    return t / 127.5 - 1


CASES = [(32, 32, 3), (37, 53, 3), (64, 48, 1), (37, 53, 0), (11, 20, 3)]


def pairs(rng):
    for h, w, c in CASES:
        a = structured(h, w, c, rng)
        yield a, blurred(a, 1.0)
        yield a, rng.integers(0, 256, a.shape, dtype=np.uint8)
        dark = a // 16  # near-black, low contrast: here SSIM's stabilising constants C1, C2 dominate
        yield dark, blurred(dark, 1.5)


def reference(a, b):
    fa, fb = a / 255.0, b / 255.0
    axis = -1 if a.ndim == 3 else None
    return {
        "l1": np.abs(fa - fb).mean(),
        "psnr": peak_signal_noise_ratio(fa, fb, data_range=1.0),
        "ssim": structural_similarity(
            fa, fb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=axis
        ),
    }


def test_against_numpy_and_skimage():
    rng = np.random.default_rng(0)
    for a, b in pairs(rng):
        ref = reference(a, b)
        for fn in ("l1", "psnr", "ssim"):
            got = float(getattr(metrics, fn)(a, b))
            assert got == pytest.approx(ref[fn], abs=1e-4), (fn, a.shape)


def test_tensor_input_matches_uint8_input():
    rng = np.random.default_rng(1)
    for a, b in pairs(rng):
        for fn in (metrics.l1, metrics.psnr, metrics.ssim, metrics.high_frequency_ratio):
            from_uint8 = float(fn(a, b))
            from_tensor = fn(to_minus1_1(a).float(), to_minus1_1(b).float())
            assert from_tensor.ndim == 0
            assert float(from_tensor) == pytest.approx(from_uint8, rel=1e-5, abs=1e-6), (fn.__name__, a.shape)


def test_batch_gives_per_image_values():
    rng = np.random.default_rng(2)
    imgs = [structured(40, 56, 3, rng) for _ in range(4)]
    outs = [blurred(im, s) for im, s in zip(imgs, (0.5, 1.0, 2.0, 3.0))]
    batch_out = torch.stack([to_minus1_1(o) for o in outs]).float()
    batch_tgt = torch.stack([to_minus1_1(t) for t in imgs]).float()
    nhwc = np.stack(outs), np.stack(imgs)
    for fn in (metrics.l1, metrics.psnr, metrics.ssim, metrics.high_frequency_ratio):
        batched = fn(batch_out, batch_tgt)
        assert batched.shape == (4,)
        singles = torch.tensor([float(fn(o, t)) for o, t in zip(outs, imgs)], dtype=torch.float64)
        torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fn(*nhwc), singles, rtol=1e-9, atol=1e-12)


def test_identical_images():
    a = structured(37, 53, 3, np.random.default_rng(3))
    assert float(metrics.l1(a, a)) == 0.0
    assert math.isinf(float(metrics.psnr(a, a))) and float(metrics.psnr(a, a)) > 0
    assert float(metrics.ssim(a, a)) == pytest.approx(1.0, abs=1e-9)
    assert float(metrics.high_frequency_ratio(a, a)) == pytest.approx(1.0, abs=1e-9)


def test_psnr_known_value():
    a = np.zeros((16, 16, 3), np.uint8)
    b = np.full((16, 16, 3), 51, np.uint8)  # 0.2 everywhere: MSE 0.04 -> 10·log10(25)
    assert float(metrics.psnr(a, b)) == pytest.approx(10 * math.log10(25), abs=1e-9)
    assert float(metrics.l1(a, b)) == pytest.approx(0.2, abs=1e-12)


def test_high_frequency_ratio_tracks_sharpness():
    rng = np.random.default_rng(4)
    for shape in ((64, 64, 3), (37, 53, 0)):
        a = structured(*shape, rng)
        ratios = [float(metrics.high_frequency_ratio(blurred(a, s), a)) for s in (3.0, 2.0, 1.0, 0.5)]
        assert ratios[0] < 0.5, ratios
        assert all(lo < hi for lo, hi in zip(ratios, ratios[1:])), ratios
        assert ratios[-1] < 1.0
        # Added noise is extra high-frequency energy: sharper-than-target scores above 1.
        noisy = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
        assert float(metrics.high_frequency_ratio(noisy, a)) > 1.2


def test_high_frequency_ratio_flat_target():
    flat = np.full((20, 20, 3), 128, np.uint8)
    assert float(metrics.high_frequency_ratio(flat, flat)) == 1.0
    noisy = np.random.default_rng(5).integers(0, 256, flat.shape, dtype=np.uint8)
    assert math.isinf(float(metrics.high_frequency_ratio(noisy, flat)))


def test_input_validation():
    a = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError):
        metrics.l1(a, np.zeros((16, 17, 3), np.uint8))
    with pytest.raises(ValueError):
        metrics.ssim(np.zeros((10, 16, 3), np.uint8), np.zeros((10, 16, 3), np.uint8))
    with pytest.raises(TypeError):
        metrics.l1(a.astype(np.float32), a.astype(np.float32))
    with pytest.raises(TypeError):
        metrics.l1(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(3, 8, 8, dtype=torch.uint8))


def test_to_unit_float_layouts():
    a = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)  # NHWC
    t = metrics.to_unit_float(a)
    assert t.shape == (2, 5, 3, 4) and t.dtype == torch.float64
    assert float(t[1, 2, 0, 3]) == a[1, 0, 3, 2] / 255
    assert metrics.to_unit_float(a[0, ..., 0]).shape == (1, 3, 4)
    x = torch.tensor([[[-1.0, 0.0, 1.0]]])
    assert metrics.to_unit_float(x).tolist() == [[[0.0, 0.5, 1.0]]]


def test_summarize():
    s = metrics.summarize([1.0, 3.0, math.inf, 2.0])
    assert s == {"mean": 2.0, "std": pytest.approx(math.sqrt(2 / 3)), "min": 1.0, "max": 3.0, "n": 4, "n_inf": 1}
    s = metrics.summarize(torch.tensor([math.inf, math.inf]))
    assert s["n"] == 2 and s["n_inf"] == 2 and math.isnan(s["mean"])
    assert math.isnan(metrics.summarize([1.0, math.nan])["mean"])
