"""The harness every kernel test uses: poisoned outputs, per-dtype tolerances, readable mismatch reports.

- `poison(t)` fills a buffer with NaN (integers with their minimum) so that an element a kernel forgot to write
  fails the comparison instead of silently holding the right answer from an earlier run.
- `assert_close(actual, expected, dtype, name)` compares with the (atol, rtol) of `TOLERANCES[dtype]` and, on
  failure, prints the worst mismatches as (index, actual, expected).
- `relative_error(actual, expected)` is ‖actual − expected‖ / ‖expected‖, the figure performance.md asks for.
- `full_sweep()` is True when FASTPIX_FULL=1: tests then sweep every pix2pix layer shape instead of the quick subset.
- Input factories (`norm_act_inputs`, `logits_input`, `l1_inputs`) and the pix2pix layer shapes
  (`PIX2PIX_NORM_LAYERS`, `PIX2PIX_LOGITS`, `PIX2PIX_IMAGE`) are shared by the kernel tests and bench/bench_kernels.py,
  so a benchmark times exactly what a test checked.
"""
import os

import torch

# (atol, rtol) per dtype of the kernel's inputs and outputs. Statistics and reductions run in fp32 whatever the
# input dtype, so the half-precision rows only have to absorb the rounding of the stored inputs and outputs.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def full_sweep() -> bool:
    """True when the full shape sweep was asked for (env FASTPIX_FULL=1); False selects the quick CI subset."""
    return os.environ.get("FASTPIX_FULL", "0") not in ("", "0")


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill `t` in place with NaN (integer tensors: their minimum value) and return it."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(torch.iinfo(t.dtype).min)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖₂ / ‖expected‖₂ in float64 (the absolute error when `expected` is all zeros)."""
    a = actual.detach().double()
    e = expected.detach().double()
    diff = torch.linalg.vector_norm(a - e).item()
    ref = torch.linalg.vector_norm(e).item()
    return diff / ref if ref > 0 else diff


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str = "output",
                 worst: int = 8, scale: float = 1.0) -> None:
    """Assert |actual − expected| ≤ atol + rtol·|expected| elementwise with the tolerances of `dtype`.

    `scale` multiplies both tolerances, for quantities summed over many elements (a gradient of γ sums n terms
    each rounded in `dtype`). NaN anywhere in `actual` (a poisoned element left unwritten) fails. On failure the
    message lists the `worst` mismatches as (index, actual, expected).
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    atol, rtol = TOLERANCES[dtype]
    atol, rtol = atol * scale, rtol * scale
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    excess = (a - e).abs() - (atol + rtol * e.abs())
    excess = torch.where(torch.isnan(a) != torch.isnan(e), torch.full_like(excess, float("inf")), excess)
    excess = torch.nan_to_num(excess, nan=-1.0)  # NaN in both places counts as equal
    bad = excess > 0
    if not bad.any():
        return
    count = int(bad.sum())
    order = torch.argsort(excess.flatten(), descending=True)[:min(worst, count)]
    lines = []
    for flat in order.tolist():
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape)) if a.dim() else ()
        lines.append(f"  at {index}: actual {a.flatten()[flat].item():.8g}, expected {e.flatten()[flat].item():.8g}")
    raise AssertionError(
        f"{name}: {count} of {a.numel()} elements differ beyond atol={atol:g}, rtol={rtol:g} ({dtype}); "
        f"relative error {relative_error(a, e):.3g}; worst:\n" + "\n".join(lines))


# Every norm layer of pix2pix at 256² (unet_256 G, basic PatchGAN D, ngf = ndf = 64) for one image: (name, C, H, W,
# the activation its fused kernel applies, its dropout probability). The U-Net's down norms carry the LeakyReLU of
# the next level, its up norms the ReLU that the parent applies after the skip concat (fastpix/models/fused.py).
PIX2PIX_NORM_LAYERS = (
    ("G.down2", 128, 64, 64, "leaky_relu", 0.0),
    ("G.down3", 256, 32, 32, "leaky_relu", 0.0),
    ("G.down4", 512, 16, 16, "leaky_relu", 0.0),
    ("G.down5", 512, 8, 8, "leaky_relu", 0.0),
    ("G.down6", 512, 4, 4, "leaky_relu", 0.0),
    ("G.down7", 512, 2, 2, "leaky_relu", 0.0),
    ("G.up8", 512, 2, 2, "relu", 0.0),
    ("G.up7", 512, 4, 4, "relu", 0.5),
    ("G.up6", 512, 8, 8, "relu", 0.5),
    ("G.up5", 512, 16, 16, "relu", 0.5),
    ("G.up4", 256, 32, 32, "relu", 0.0),
    ("G.up3", 128, 64, 64, "relu", 0.0),
    ("G.up2", 64, 128, 128, "relu", 0.0),
    ("D.norm1", 128, 64, 64, "leaky_relu", 0.0),
    ("D.norm2", 256, 32, 32, "leaky_relu", 0.0),
    ("D.norm3", 512, 31, 31, "leaky_relu", 0.0),
)
PIX2PIX_LOGITS = (1, 30, 30)  # PatchGAN logits per image (C, H, W)
PIX2PIX_IMAGE = (3, 256, 256)  # G's output and the target per image


def _generator(seed):
    return None if seed is None else torch.Generator().manual_seed(seed)


def norm_act_inputs(N, C, H, W, dtype, device="cpu", *, mean=0.0, std=1.0, affine=True, seed=None):
    """Random inputs of a norm + activation layer: x (channels_last, N(mean, std²)), weight ≈ N(1, 0.5²),
    bias ≈ N(0, 0.5²) (off their (1, 0) initial values so that they matter; None when not affine), running_mean,
    running_var (fp32, not the trivial (0, 1)) and dy, the incoming gradient (channels_last). Drawn on the CPU
    from torch's generator (or one seeded `seed`), then moved: the same seed gives the same inputs on any device."""
    g = _generator(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    x = (randn(N, C, H, W) * std + mean).to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    dy = randn(N, C, H, W).to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = (1.0 + 0.5 * randn(C)).to(device) if affine else None
    bias = (0.5 * randn(C)).to(device) if affine else None
    running_mean = (0.1 * randn(C)).to(device)
    running_var = (1.0 + torch.rand(C, generator=g)).to(device)
    return {"x": x, "weight": weight, "bias": bias, "running_mean": running_mean, "running_var": running_var,
            "dy": dy}


def logits_input(N, dtype, device="cpu", shape=PIX2PIX_LOGITS, scale=3.0, seed=None):
    """PatchGAN logits [N, *shape] ≈ N(0, scale²): both signs, some confident (|x| ≫ 1)."""
    return (torch.randn(N, *shape, generator=_generator(seed)) * scale).to(device=device, dtype=dtype)


def l1_inputs(N, dtype, device="cpu", shape=PIX2PIX_IMAGE, seed=None):
    """G's output (tanh range, channels_last as the triton backend produces it) and a target image in [−1, 1]
    (contiguous, as the data pipeline delivers it), both [N, *shape]; some elements are exactly equal (sign 0)."""
    g = _generator(seed)
    fake = torch.tanh(torch.randn(N, *shape, generator=g) * 2)
    real = torch.rand(N, *shape, generator=g) * 2 - 1
    equal = torch.rand(N, *shape, generator=g) < 0.05
    real = torch.where(equal, fake, real)
    fake = fake.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    return fake, real.to(device=device, dtype=dtype)
