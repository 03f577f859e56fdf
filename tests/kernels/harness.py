"""The harness every kernel test uses: poisoned outputs, per-dtype tolerances, readable mismatch reports.

- `poison(t)` fills a buffer with NaN (integers with their minimum) so that an element a kernel forgot to write
  fails the comparison instead of silently holding the right answer from an earlier run.
- `assert_close(actual, expected, dtype, name)` compares with the (atol, rtol) of `TOLERANCES[dtype]` and, on
  failure, prints the worst mismatches as (index, actual, expected).
- `relative_error(actual, expected)` is ‖actual − expected‖ / ‖expected‖, the figure the GPU tests bound.
- `full_sweep()` is True when FASTPIX_FULL=1: tests then sweep every pix2pix layer shape instead of the quick subset.

The input factories and the pix2pix layer shapes the tests use come from fastpix.bench_suites.layers
(bench/suites/layers.py), shared with the benchmarks, so that a benchmark times exactly what a test checked.
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


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    dtype: torch.dtype,
    name: str = "output",
    worst: int = 8,
    scale: float = 1.0,
) -> None:
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
    order = torch.argsort(excess.flatten(), descending=True)[: min(worst, count)]
    lines = []
    for flat in order.tolist():
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape)) if a.dim() else ()
        lines.append(f"  at {index}: actual {a.flatten()[flat].item():.8g}, expected {e.flatten()[flat].item():.8g}")
    raise AssertionError(
        f"{name}: {count} of {a.numel()} elements differ beyond atol={atol:g}, rtol={rtol:g} ({dtype}); "
        f"relative error {relative_error(a, e):.3g}; worst:\n" + "\n".join(lines)
    )
