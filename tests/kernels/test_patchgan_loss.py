"""The fused PatchGAN loss against nn.BCEWithLogitsLoss ('vanilla') and nn.MSELoss ('lsgan') to a constant label.

The reference runs in float64 on the very logits the kernel saw; the loss is fp32 and checked with fp32 tolerances,
the gradient with the logits' dtype's (it is rounded once to that dtype). Output buffers are poisoned first.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F
from harness import assert_close, full_sweep, poison

from fastpix.bench_suites.layers import logits_input
from fastpix.kernels.patchgan_loss import patchgan_loss, patchgan_loss_forward

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# PatchGAN logit maps: basic D at 256² (30×30) and at other sizes/depths, a pixel D map, odd sizes, one logit.
SHAPES = [
    (1, 1, 30, 30),
    (5, 1, 30, 30),
    (2, 1, 3, 7),
    (1, 1, 1, 1),
    (2, 1, 62, 62),
    (16, 1, 30, 30),
    (64, 1, 30, 30),
    (1, 1, 256, 256),
]
QUICK = [(1, 1, 30, 30), (5, 1, 30, 30), (2, 1, 3, 7), (1, 1, 1, 1), (2, 1, 62, 62)]
CASES = list(
    itertools.product(
        SHAPES if full_sweep() else QUICK, ("vanilla", "lsgan"), (True, False), (torch.float32, torch.float16)
    )
)


def reference(logits, real, mode, grad_output=1.0):
    x = logits.double().requires_grad_()
    target = torch.full_like(x, 1.0 if real else 0.0)
    loss = F.binary_cross_entropy_with_logits(x, target) if mode == "vanilla" else F.mse_loss(x, target)
    (loss * grad_output).backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("shape,mode,real,dtype", CASES)
def test_matches_eager(shape, mode, real, dtype):
    logits = logits_input(shape[0], dtype, DEVICE, shape=shape[1:])
    grad = poison(torch.empty_like(logits, dtype=torch.float32))
    loss, grad = patchgan_loss_forward(logits, real, mode, out_grad=grad)
    want_loss, want_grad = reference(logits, real, mode)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_close(loss, want_loss, torch.float32, "loss")
    assert_close(grad, want_grad, torch.float32, "dloss/dlogits (fp32 buffer)")
    # through autograd, with an upstream gradient (a GradScaler's scale): rounded once to the logits' dtype
    x = logits.clone().requires_grad_()
    (patchgan_loss(x, real, mode) * 1024.0).backward()
    _, want_scaled = reference(logits, real, mode, 1024.0)
    assert x.grad.dtype == dtype
    assert_close(x.grad, want_scaled, dtype, "scaled gradient")


def test_confident_logits_keep_their_tiny_loss():
    """log1p accuracy: at |x| = 20 the loss is e^-20 ≈ 2e-9, which a plain log(1 + e) would round to 0."""
    logits = torch.full((1, 1, 4, 4), 20.0, device=DEVICE)
    loss, _ = patchgan_loss_forward(logits, True, "vanilla")
    want, _ = reference(logits, True, "vanilla")
    assert abs(loss.item() - want.item()) <= 1e-6 * want.item()


def test_bitwise_deterministic_and_layout_independent():
    logits = logits_input(5, torch.float32, DEVICE, shape=(1, 62, 62))
    a = patchgan_loss_forward(logits, True, "vanilla")
    b = patchgan_loss_forward(logits, True, "vanilla")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    strided = logits.transpose(2, 3)  # not dense in either layout: read through a contiguous copy
    c, _ = patchgan_loss_forward(strided, True, "vanilla")
    want, _ = reference(strided, True, "vanilla")
    assert_close(c, want, torch.float32, "loss of a transposed view")


def test_no_gradient_buffer_without_requires_grad():
    loss, grad = patchgan_loss_forward(logits_input(2, torch.float32, DEVICE), False, "lsgan", write_grad=False)
    assert grad is None
    assert patchgan_loss(logits_input(2, torch.float32, DEVICE), False).grad_fn is None


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="gan mode 'wgan'"):
        patchgan_loss(torch.zeros(1, 1, 2, 2, device=DEVICE), True, "wgan")
    with pytest.raises(ValueError, match="empty"):
        patchgan_loss(torch.zeros(0, 1, 2, 2, device=DEVICE), True)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 16, 64])
@pytest.mark.parametrize("mode", ["vanilla", "lsgan"])
def test_bfloat16_on_gpu(batch, mode):
    logits = logits_input(batch, torch.bfloat16, DEVICE)
    x = logits.clone().requires_grad_()
    loss = patchgan_loss(x, True, mode)
    (loss * 65536.0).backward()
    want_loss, want_grad = reference(logits, True, mode, 65536.0)
    assert_close(loss, want_loss, torch.float32, "loss")
    assert_close(x.grad, want_grad, torch.bfloat16, "scaled gradient")
