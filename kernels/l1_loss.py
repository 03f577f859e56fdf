"""Fused weighted L1 loss: weight·mean|x − y| and its gradient (pix2pix's λ_L1·L1(G(A), B)).

Forward, one pass: `_l1_loss_kernel` reads x and y once, writes one partial Σ|x − y| per block and sign(x − y) as
int8 (torch's convention: sign(0) = 0) for backward; the partials are added in a fixed order by a single program
(`sum_partials`, shared with the PatchGAN loss). Backward, one pass: `_l1_backward_kernel` writes
dx = sign·(grad_output·weight/N) — computed in fp32 and rounded once to x's dtype, as eager autocast does, so a
GradScaler's scale is applied before the rounding — and dy = −dx. The incoming gradient is read from the device:
no host synchronisation anywhere, deterministic, the loss fp32 whatever the inputs' dtype.
"""

import torch
import triton
import triton.language as tl

from fastpix.kernels import require_launchable
from fastpix.kernels._shared import dense, sum_partials

BLOCK = 2048


@triton.jit
def _l1_loss_kernel(X, Y, SIGN, PARTIALS, numel, WRITE_SIGN: tl.constexpr, BLOCK: tl.constexpr):
    """Per-block Σ|x − y| and the elementwise sign. Grid (cdiv(numel, BLOCK),).

    X, Y: inputs, flat [numel], the same storage order. SIGN: int8 [numel] output, sign(x − y) (written when
    WRITE_SIGN). PARTIALS: fp32 [grid] block sums. numel: elements. BLOCK: elements per program.
    """
    pid = tl.program_id(0)
    offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    d = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32) - tl.load(Y + offsets, mask=mask, other=0.0).to(
        tl.float32
    )
    tl.store(PARTIALS + pid, tl.sum(tl.abs(d), axis=0))
    if WRITE_SIGN:
        sign = tl.where(d > 0, 1, tl.where(d < 0, -1, 0))
        tl.store(SIGN + offsets, sign.to(tl.int8), mask=mask)


@triton.jit
def _l1_backward_kernel(
    SIGN, GRAD_OUTPUT, DX, DY, numel, scale, WRITE_DX: tl.constexpr, WRITE_DY: tl.constexpr, BLOCK: tl.constexpr
):
    """dx = sign·grad_output·scale and dy = −dx. Grid (cdiv(numel, BLOCK),).

    SIGN: int8 [numel] from `_l1_loss_kernel`. GRAD_OUTPUT: fp32 [1], the loss's incoming gradient. DX, DY: [numel]
    outputs in the dtypes of x and y (written when WRITE_DX / WRITE_DY). numel: elements. scale: weight/numel.
    BLOCK: elements per program.
    """
    pid = tl.program_id(0)
    offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    g = tl.load(GRAD_OUTPUT) * scale
    dx = tl.load(SIGN + offsets, mask=mask, other=0).to(tl.float32) * g
    if WRITE_DX:
        tl.store(DX + offsets, dx.to(DX.dtype.element_ty), mask=mask)
    if WRITE_DY:
        tl.store(DY + offsets, (-dx).to(DY.dtype.element_ty), mask=mask)


def l1_loss_forward(x, y, weight=1.0, write_sign=True):
    """Launch the fused pass. Returns (loss fp32 0-d, x in the storage order the kernel read, sign(x − y) as int8
    laid out like that x, or None)."""
    require_launchable(x, "l1_loss")
    if x.shape != y.shape:
        raise ValueError(f"l1_loss: x has shape {tuple(x.shape)} but y has {tuple(y.shape)}")
    if x.device != y.device:
        raise ValueError(f"l1_loss: x is on {x.device} but y is on {y.device}")
    x = dense(x)
    # Both operands must be read in the same storage order: y follows x's layout.
    fmt = torch.channels_last if x.dim() == 4 and not x.is_contiguous() else torch.contiguous_format
    y = y.contiguous(memory_format=fmt)
    numel = x.numel()
    if numel == 0:
        raise ValueError("l1_loss of an empty tensor")
    grid = triton.cdiv(numel, BLOCK)
    partials = torch.empty(grid, dtype=torch.float32, device=x.device)
    sign = torch.empty_like(x, dtype=torch.int8) if write_sign else None
    _l1_loss_kernel[(grid,)](
        x, y, sign if write_sign else partials, partials, numel, WRITE_SIGN=write_sign, BLOCK=BLOCK
    )
    return sum_partials(partials, weight / numel), x, sign


def l1_loss_backward(sign, grad_output, weight, x_dtype, y_dtype, need_dx=True, need_dy=True, out=None):
    """Launch the backward. sign: int8 from `l1_loss_forward` (its layout is the gradients'). grad_output: 0-d.
    out: optional preallocated (dx, dy) (tests poison them). Returns (dx or None, dy or None)."""
    numel = sign.numel()
    dx, dy = out if out is not None else (None, None)
    if need_dx and dx is None:
        dx = torch.empty_like(sign, dtype=x_dtype)
    if need_dy and dy is None:
        dy = torch.empty_like(sign, dtype=y_dtype)
    g = grad_output.reshape(1).to(torch.float32)
    _l1_backward_kernel[(triton.cdiv(numel, BLOCK),)](
        sign,
        g,
        dx if need_dx else sign,
        dy if need_dy else sign,
        numel,
        weight / numel,
        WRITE_DX=need_dx,
        WRITE_DY=need_dy,
        BLOCK=BLOCK,
    )
    return (dx if need_dx else None), (dy if need_dy else None)


class L1LossFunction(torch.autograd.Function):
    """Autograd wiring: forward saves sign(x − y); backward scales it by the incoming gradient."""

    @staticmethod
    def forward(ctx, x, y, weight):
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        loss, _, sign = l1_loss_forward(x, y, weight, write_sign=needs_grad)
        ctx.save_for_backward(sign)
        ctx.weight, ctx.x_dtype, ctx.y_dtype = weight, x.dtype, y.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (sign,) = ctx.saved_tensors
        dx, dy = l1_loss_backward(
            sign,
            grad_output,
            ctx.weight,
            ctx.x_dtype,
            ctx.y_dtype,
            need_dx=ctx.needs_input_grad[0],
            need_dy=ctx.needs_input_grad[1],
        )
        return dx, dy, None


def l1_loss(x, y, weight=1.0):
    """weight·mean|x − y| (= weight·nn.L1Loss()(x, y)) as an fp32 0-d tensor; gradients for x and y
    (weight·sign(x − y)/N and its negation) in their own dtypes; no host synchronisation; deterministic."""
    return L1LossFunction.apply(x, y, float(weight))
