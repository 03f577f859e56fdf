"""The fused λ·L1 loss against weight·nn.L1Loss(): loss, d/dx and d/dy, in float64 on the very values the kernel saw.

Gradient buffers are poisoned first; the gradient is rounded once to each input's dtype (after the upstream
gradient, e.g. a GradScaler's scale, is applied), so it is checked with that dtype's tolerance.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F
from harness import assert_close, full_sweep, poison

from fastpix.bench_suites.layers import PIX2PIX_IMAGE, l1_inputs
from fastpix.kernels.l1_loss import l1_loss, l1_loss_backward, l1_loss_forward

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [
    (1, 3, 32, 32),
    (2, 3, 3, 7),
    (5, 1, 2, 2),
    (1, 3, 1, 1),
    (2, 3, 64, 64),
    (1, *PIX2PIX_IMAGE),
    (16, *PIX2PIX_IMAGE),
]
QUICK = [(1, 3, 32, 32), (2, 3, 3, 7), (5, 1, 2, 2), (1, 3, 1, 1), (2, 3, 64, 64)]
CASES = list(itertools.product(SHAPES if full_sweep() else QUICK, (torch.float32, torch.float16), (1.0, 100.0)))


def reference(x, y, weight, grad_output=1.0):
    xd = x.double().requires_grad_()
    yd = y.double().requires_grad_()
    loss = F.l1_loss(xd, yd) * weight
    (loss * grad_output).backward()
    return loss.detach(), xd.grad, yd.grad


@pytest.mark.parametrize("shape,dtype,weight", CASES)
def test_matches_eager(shape, dtype, weight):
    x, y = l1_inputs(shape[0], dtype, DEVICE, shape=shape[1:])
    loss, _, sign = l1_loss_forward(x, y, weight)
    scale = torch.tensor(512.0, device=DEVICE)  # an upstream gradient, as from a GradScaler
    out = (poison(torch.empty_like(sign, dtype=dtype)), poison(torch.empty_like(sign, dtype=dtype)))
    dx, dy = l1_loss_backward(sign, scale, weight, dtype, dtype, out=out)
    want_loss, want_dx, want_dy = reference(x, y, weight, 512.0)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_close(loss, want_loss, torch.float32, "loss")
    assert_close(dx, want_dx, dtype, "dx")
    assert_close(dy, want_dy, dtype, "dy")
    if sign.numel() >= 100:  # ~5% of the elements are equal: torch's sign(0) = 0 is exercised
        assert (sign == 0).any()


def test_autograd_mixed_layouts_and_dtypes():
    """x channels_last bf16-like (here fp16), y contiguous fp32: each gradient comes back in its input's dtype."""
    x, y = l1_inputs(2, torch.float16, DEVICE, shape=(3, 8, 8))
    y = y.float()
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    l1_loss(xg, yg, 100.0).backward()
    _, want_dx, want_dy = reference(x, y, 100.0)
    assert xg.grad.dtype == torch.float16 and yg.grad.dtype == torch.float32
    assert_close(xg.grad, want_dx, torch.float16, "dx")
    assert_close(yg.grad, want_dy, torch.float32, "dy")
    only_x = x.clone().requires_grad_()
    l1_loss(only_x, y, 100.0).backward()
    assert torch.equal(only_x.grad, xg.grad)


def test_bitwise_deterministic():
    x, y = l1_inputs(2, torch.float32, DEVICE, shape=(3, 64, 64))
    a, b = l1_loss_forward(x, y, 100.0), l1_loss_forward(x, y, 100.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"x has shape \(1, 3, 4, 4\) but y has \(1, 3, 4, 5\)"):
        l1_loss(torch.zeros(1, 3, 4, 4, device=DEVICE), torch.zeros(1, 3, 4, 5, device=DEVICE))
    with pytest.raises(ValueError, match="empty"):
        l1_loss(torch.zeros(0, 3, 4, 4, device=DEVICE), torch.zeros(0, 3, 4, 4, device=DEVICE))


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 16, 64])
def test_bfloat16_pix2pix_images_on_gpu(batch):
    x, y = l1_inputs(batch, torch.bfloat16, DEVICE)
    xg = x.clone().requires_grad_()
    loss = l1_loss(xg, y, 100.0)
    (loss * 65536.0).backward()
    want_loss, want_dx, _ = reference(x, y, 100.0, 65536.0)
    assert_close(loss, want_loss, torch.float32, "loss", scale=10)  # a sum of ~1e7 fp32 terms
    assert_close(xg.grad, want_dx, torch.bfloat16, "scaled dx")
