"""Fused PatchGAN loss: mean BCE-with-logits ("vanilla") or mean squared error ("lsgan") against a constant label.

One pass over the logits computes each element's loss and its gradient: `_patchgan_loss_kernel` writes
dloss/dlogit / N (fp32) into a buffer kept for backward and one partial sum per block; `sum_partials_kernel`
(_shared.py, a single program) adds the partials in a fixed order and divides by N. Backward only scales the saved
gradient by the incoming grad_output, in fp32, and rounds once to the logits' dtype: a GradScaler's large scale is
applied before that rounding, as in eager autocast (where the loss runs in fp32), rather than to an fp16 value
already flushed towards zero (1/N is ≈2e-5 at batch 64). The logits are small (N×1×30×30), so the fp32 buffer costs
nothing. No value crosses to the host, so the loss can be captured in a CUDA graph, and the result is bitwise
reproducible (the reduction tree depends only on the shape).

The loss is returned in fp32 whatever the logits' dtype: it is the accumulation dtype, and autocast runs
binary_cross_entropy_with_logits and mse_loss in fp32 too.
"""

import torch
import triton
import triton.language as tl

from fastpix.kernels import require_launchable
from fastpix.kernels._shared import dense, sum_partials

MODES = {"vanilla": 0, "lsgan": 1}
BLOCK = 2048


@triton.jit
def _patchgan_loss_kernel(
    X,
    DX,
    PARTIALS,
    numel,
    inv_numel,
    TARGET: tl.constexpr,
    MODE: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Per-element loss and gradient of a block. Grid (cdiv(numel, BLOCK),).

    X: logits, flat [numel]. DX: flat fp32 [numel] output, dloss/dlogit / numel (written when WRITE_GRAD).
    PARTIALS: fp32 [grid] output, this block's loss sum. numel: elements. inv_numel: 1/numel. TARGET: the label,
    1.0 real or 0.0 fake. MODE: 0 BCE-with-logits, 1 squared error. BLOCK: elements per program.
    """
    pid = tl.program_id(0)
    offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    x = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32)
    if MODE == 0:
        # Stable BCE with logits: max(x, 0) − x·t + log1p(e^(−|x|)). log1p(e) as log(u)·e/(u − 1), u = 1 + e
        # (Goldberg's identity; tl has no log1p on every Triton version): exact to rounding also where e is below
        # fp32 resolution next to 1, so a confident logit's tiny loss is not flushed to 0.
        e = tl.exp(-tl.abs(x))
        u = 1.0 + e
        log1p_e = tl.where(u == 1.0, e, tl.log(u) * (e / tl.where(u == 1.0, 1.0, u - 1.0)))
        loss = tl.maximum(x, 0.0) - x * TARGET + log1p_e
        sigmoid = tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        grad = sigmoid - TARGET
    else:
        d = x - TARGET
        loss = d * d
        grad = 2.0 * d
    loss = tl.where(mask, loss, 0.0)
    tl.store(PARTIALS + pid, tl.sum(loss, axis=0))
    if WRITE_GRAD:
        tl.store(DX + offsets, grad * inv_numel, mask=mask)


def patchgan_loss_forward(logits, target_is_real, mode="vanilla", write_grad=True, out_grad=None):
    """Launch the fused pass. Returns (loss fp32 0-d, dloss/dlogits in fp32, shaped and laid out like logits, or
    None). out_grad: optional preallocated fp32 gradient buffer with logits' shape and layout (tests poison it)."""
    require_launchable(logits, "patchgan_loss")
    if mode not in MODES:
        raise ValueError(f"gan mode {mode!r} is not one of {', '.join(MODES)}")
    x = dense(logits)
    numel = x.numel()
    if numel == 0:
        raise ValueError("patchgan_loss of an empty tensor")
    grid = triton.cdiv(numel, BLOCK)
    partials = torch.empty(grid, dtype=torch.float32, device=x.device)
    grad = None
    if write_grad:
        grad = torch.empty_like(x, dtype=torch.float32) if out_grad is None else out_grad
    _patchgan_loss_kernel[(grid,)](
        x,
        grad if write_grad else x,
        partials,
        numel,
        1.0 / numel,
        TARGET=1.0 if target_is_real else 0.0,
        MODE=MODES[mode],
        WRITE_GRAD=write_grad,
        BLOCK=BLOCK,
    )
    return sum_partials(partials, 1.0 / numel), grad


class PatchGANLossFunction(torch.autograd.Function):
    """Autograd wiring: the gradient was computed in the forward pass; backward scales it."""

    @staticmethod
    def forward(ctx, logits, target_is_real, mode):
        loss, grad = patchgan_loss_forward(logits, target_is_real, mode, write_grad=ctx.needs_input_grad[0])
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(ctx.logits_dtype), None, None


def patchgan_loss(logits, target_is_real: bool, mode="vanilla"):
    """Mean GAN loss of PatchGAN logits against the constant label 1.0 (target_is_real) or 0.0.

    mode: 'vanilla' (= nn.BCEWithLogitsLoss) or 'lsgan' (= nn.MSELoss). Returns an fp32 0-d tensor; autograd-enabled;
    no host synchronisation; deterministic.
    """
    return PatchGANLossFunction.apply(logits, bool(target_is_real), mode)
