"""Fused BatchNorm / InstanceNorm + activation (+ dropout): Triton kernels, launchers, autograd.Function (the
modules are fastpix/models/norm_act.py).

Layout: the input is NCHW-shaped and channels_last (NHWC) in memory; a contiguous NCHW input is converted once. The
kernels see it as a row-major matrix [rows, C] whose rows are split into `groups` equal groups of R rows: one group
for batch norm (R = N·H·W), one group per sample for instance norm (R = H·W). Statistics are per (group, channel).

Forward (training statistics), three launches:
  1. `_stats_partials_kernel`: each program walks a fixed run of [BLOCK_M, BLOCK_C] tiles and writes one
     (count, mean, M2) per channel, M2 = Σ(x − mean)², each tile's from the tile held in registers (two passes
     over registers, one over memory) merged into the program's with Chan's update;
  2. `stats_finalize_kernel`: merges the partials of each group in a fixed order with Chan's parallel algorithm —
     deterministic, and accurate when |mean|/std is large, where E[x²] − E[x]² would cancel catastrophically —
     writes per-(group, channel) mean and rstd and updates running_mean/running_var like nn.BatchNorm2d;
  3. `_norm_act_kernel`: y = dropout(act(x̂·γ + β)), x̂ = (x − mean)·rstd.
Eval mode skips 1–2 and feeds the running statistics to 3.

Backward, three launches: per-program partial Σdz and Σdz·x̂ with dz = dy·act'(z)·mask recomputed from the saved
input (`_grad_partials_kernel`), a fixed-order merge that also writes dγ = Σdz·x̂ and dβ = Σdz
(`grad_finalize_kernel`), and dx = γ·rstd·(dz − Σdz/n − x̂·Σdz·x̂/n) (`_norm_act_backward_kernel`; eval mode drops
the two batch terms).

Dropout: keep an element when u ≥ p, u = tl.rand(seed, offset + i) (Philox, counter-based), i the element's NHWC
linear index, then scale by 1/(1 − p). seed and offset live in an int64 device tensor `rng_state = [seed, offset]`;
the public functions read it, save a device copy for backward (the mask is regenerated there, never stored) and
advance `rng_state[1]` by x.numel() with a device-side add, so a captured CUDA graph draws a fresh mask on each
replay without recapture and without host synchronisation.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from fastpix.kernels import require_launchable
from fastpix.kernels._shared import (
    ACTIVATIONS,
    activation_grad,
    apply_activation,
    dropout_scale,
    grad_finalize_kernel,
    snapshot_and_advance,
    stats_finalize_kernel,
)


@triton.jit
def _tile(g, r0, cb, R, row_end, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Offsets (int64, NHWC linear index), mask and channel indices of the tile whose first row is r0 (of group g,
    rows before row_end ≤ R) and whose channels are block cb."""
    rows = r0 + tl.arange(0, BLOCK_M)
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    mask = (rows < row_end)[:, None] & col_mask[None, :]
    offsets = (g * R + rows).to(tl.int64)[:, None] * C + cols[None, :]
    return offsets, mask, cols, col_mask


@triton.jit
def _recompute_dz(
    X,
    DY,
    MEAN,
    RSTD,
    W,
    B,
    RNG,
    offsets,
    mask,
    cols,
    col_mask,
    g,
    C,
    slope,
    p,
    scale,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    DROPOUT: tl.constexpr,
):
    """x̂ and dz = dy·act'(x̂·γ + β)·mask of one tile, in fp32, from the saved input and statistics."""
    x = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offsets, mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(MEAN + g * C + cols, mask=col_mask, other=0.0)
    rstd = tl.load(RSTD + g * C + cols, mask=col_mask, other=0.0)
    xhat = (x - mean[None, :]) * rstd[None, :]
    z = xhat
    if HAS_WEIGHT:
        z = z * tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        z = z + tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    dz = dy * activation_grad(z, slope, ACTIVATION)
    if DROPOUT:
        dz = dz * dropout_scale(RNG, offsets, p, scale)
    # Masked-out lanes must not leak into the reductions (x̂ of a padding lane is −mean·rstd, not 0).
    dz = tl.where(mask, dz, 0.0)
    xhat = tl.where(mask, xhat, 0.0)
    return xhat, dz


# --------------------------------------------------------------------------------------------------------------
# Forward kernels
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _stats_partials_kernel(
    X, COUNT, MEAN_P, M2_P, R, C, T, ROWS_PER_PROGRAM, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr
):
    """Per-program (count, mean, M2) of x over ROWS_PER_PROGRAM rows. Grid (T, cdiv(C, BLOCK_C), groups).

    X: input [groups·R, C], row stride C (NHWC). COUNT: fp32 [groups, T] rows seen by each program. MEAN_P, M2_P:
    fp32 [groups, T, C] mean and Σ(x − mean)² of those rows. R: rows per group. C: channels. T: programs per group
    (cdiv(R, ROWS_PER_PROGRAM)). ROWS_PER_PROGRAM: a multiple of BLOCK_M. BLOCK_M: rows per tile. BLOCK_C: channels
    per tile. Each tile's (mean, M2) comes from the tile held in registers (two passes over registers, one over
    memory) and is merged into the program's running partial with Chan's update, tiles in row order.
    """
    t = tl.program_id(0)
    cb = tl.program_id(1)
    g = tl.program_id(2)
    row_start = t * ROWS_PER_PROGRAM
    row_end = tl.minimum(row_start + ROWS_PER_PROGRAM, R)
    # Sums of x − shift, shift = the program's first row: with |mean| ≫ std a raw Σx would lose the mean's
    # low digits to rounding (≈3e-5·std at |mean|/std = 100 over 1024 rows); x − shift is of the order of std.
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    shift = tl.load(X + (g * R + row_start).to(tl.int64) * C + cols, mask=col_mask, other=0.0).to(tl.float32)
    n_a = tl.zeros([BLOCK_C], tl.float32)
    mean_a = tl.zeros([BLOCK_C], tl.float32)
    m2_a = tl.zeros([BLOCK_C], tl.float32)
    for r0 in range(row_start, row_end, BLOCK_M):
        offsets, mask, cols, col_mask = _tile(g, r0, cb, R, row_end, C, BLOCK_M, BLOCK_C)
        x = tl.where(mask, tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32) - shift[None, :], 0.0)
        n_b = tl.minimum(row_end - r0, BLOCK_M).to(tl.float32)
        mean_b = tl.sum(x, axis=0) / n_b
        d = tl.where(mask, x - mean_b[None, :], 0.0)
        m2_b = tl.sum(d * d, axis=0)
        n_ab = n_a + n_b
        delta = mean_b - mean_a
        mean_a = mean_a + delta * (n_b / n_ab)
        m2_a = m2_a + m2_b + delta * delta * (n_a * n_b / n_ab)
        n_a = n_ab
    out = (g * T + t).to(tl.int64) * C + cols
    tl.store(MEAN_P + out, mean_a + shift, mask=col_mask)
    tl.store(M2_P + out, m2_a, mask=col_mask)
    if cb == 0:
        tl.store(COUNT + g * T + t, (row_end - row_start).to(tl.float32))


@triton.jit
def _norm_act_kernel(
    X,
    Y,
    MEAN,
    RSTD,
    W,
    B,
    RNG,
    R,
    C,
    slope,
    p,
    scale,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """y = dropout(act((x − mean)·rstd·γ + β)). Grid (cdiv(R, BLOCK_M), cdiv(C, BLOCK_C), groups).

    X, Y: input and output [groups·R, C], row stride C (NHWC). MEAN, RSTD: fp32 [groups, C]. W, B: γ, β [C]
    (read only when HAS_WEIGHT / HAS_BIAS). RNG: int64 [seed, offset] (read only when DROPOUT). R: rows per group.
    C: channels. slope: leaky_relu negative slope. p: dropout probability. scale: 1/(1 − p). ACTIVATION: 0 none,
    1 relu, 2 leaky_relu. BLOCK_M: rows per tile. BLOCK_C: channels per tile.
    """
    t = tl.program_id(0)
    cb = tl.program_id(1)
    g = tl.program_id(2)
    offsets, mask, cols, col_mask = _tile(g, t * BLOCK_M, cb, R, R, C, BLOCK_M, BLOCK_C)
    x = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(MEAN + g * C + cols, mask=col_mask, other=0.0)
    rstd = tl.load(RSTD + g * C + cols, mask=col_mask, other=0.0)
    z = (x - mean[None, :]) * rstd[None, :]
    if HAS_WEIGHT:
        z = z * tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        z = z + tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    y = apply_activation(z, slope, ACTIVATION)
    if DROPOUT:
        y = y * dropout_scale(RNG, offsets, p, scale)
    tl.store(Y + offsets, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _dropout_mask_kernel(RNG, KEEP, numel, p, BLOCK: tl.constexpr):
    """KEEP[i] = 1 where the fused kernels keep element i (NHWC linear index). Grid (cdiv(numel, BLOCK),).

    RNG: int64 [seed, offset]. KEEP: uint8 [numel]. numel: elements. p: dropout probability. BLOCK: per program.
    """
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    keep = dropout_scale(RNG, offsets, p, 1.0)
    tl.store(KEEP + offsets, keep.to(tl.uint8), mask=offsets < numel)


# --------------------------------------------------------------------------------------------------------------
# Backward kernels
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _grad_partials_kernel(
    X,
    DY,
    MEAN,
    RSTD,
    W,
    B,
    RNG,
    SUM_DZ_P,
    SUM_DZX_P,
    R,
    C,
    T,
    ROWS_PER_PROGRAM,
    slope,
    p,
    scale,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Per-program Σdz and Σdz·x̂ over ROWS_PER_PROGRAM rows, tiles added in row order. Grid (T, cdiv(C, BLOCK_C),
    groups).

    X, DY: saved input and incoming gradient [groups·R, C] (NHWC). MEAN, RSTD: fp32 [groups, C]. W, B, RNG, slope,
    p, scale, ACTIVATION, DROPOUT: as in `_norm_act_kernel`. SUM_DZ_P, SUM_DZX_P: fp32 [groups, T, C] outputs.
    R: rows per group. C: channels. T: programs per group. ROWS_PER_PROGRAM, BLOCK_M, BLOCK_C: as in
    `_stats_partials_kernel`.
    """
    t = tl.program_id(0)
    cb = tl.program_id(1)
    g = tl.program_id(2)
    row_start = t * ROWS_PER_PROGRAM
    row_end = tl.minimum(row_start + ROWS_PER_PROGRAM, R)
    s_dz = tl.zeros([BLOCK_C], tl.float32)
    s_dzx = tl.zeros([BLOCK_C], tl.float32)
    for r0 in range(row_start, row_end, BLOCK_M):
        offsets, mask, cols, col_mask = _tile(g, r0, cb, R, row_end, C, BLOCK_M, BLOCK_C)
        xhat, dz = _recompute_dz(
            X,
            DY,
            MEAN,
            RSTD,
            W,
            B,
            RNG,
            offsets,
            mask,
            cols,
            col_mask,
            g,
            C,
            slope,
            p,
            scale,
            HAS_WEIGHT,
            HAS_BIAS,
            ACTIVATION,
            DROPOUT,
        )
        s_dz += tl.sum(dz, axis=0)
        s_dzx += tl.sum(dz * xhat, axis=0)
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    out = (g * T + t).to(tl.int64) * C + cols
    tl.store(SUM_DZ_P + out, s_dz, mask=cols < C)
    tl.store(SUM_DZX_P + out, s_dzx, mask=cols < C)


@triton.jit
def _norm_act_backward_kernel(
    X,
    DY,
    DX,
    MEAN,
    RSTD,
    W,
    B,
    RNG,
    SUM_DZ,
    SUM_DZX,
    R,
    C,
    inv_n,
    slope,
    p,
    scale,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    DROPOUT: tl.constexpr,
    BATCH_STATS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """dx = γ·rstd·(dz − Σdz/n − x̂·Σdz·x̂/n), or γ·rstd·dz for fixed (running) statistics.
    Grid (cdiv(R, BLOCK_M), cdiv(C, BLOCK_C), groups).

    X, DY, DX: saved input, incoming gradient and output gradient [groups·R, C] (NHWC). MEAN, RSTD: fp32
    [groups, C]. W, B, RNG, slope, p, scale, ACTIVATION, DROPOUT: as in `_norm_act_kernel`. SUM_DZ, SUM_DZX: fp32
    [groups, C] from `grad_finalize_kernel` (read when BATCH_STATS). R: rows per group. C: channels. inv_n: 1/R.
    BATCH_STATS: the statistics were computed from this input (training), so they depend on x.
    BLOCK_M, BLOCK_C: tile shape.
    """
    t = tl.program_id(0)
    cb = tl.program_id(1)
    g = tl.program_id(2)
    offsets, mask, cols, col_mask = _tile(g, t * BLOCK_M, cb, R, R, C, BLOCK_M, BLOCK_C)
    xhat, dz = _recompute_dz(
        X,
        DY,
        MEAN,
        RSTD,
        W,
        B,
        RNG,
        offsets,
        mask,
        cols,
        col_mask,
        g,
        C,
        slope,
        p,
        scale,
        HAS_WEIGHT,
        HAS_BIAS,
        ACTIVATION,
        DROPOUT,
    )
    if BATCH_STATS:
        s_dz = tl.load(SUM_DZ + g * C + cols, mask=col_mask, other=0.0)
        s_dzx = tl.load(SUM_DZX + g * C + cols, mask=col_mask, other=0.0)
        dz = dz - s_dz[None, :] * inv_n - xhat * (s_dzx[None, :] * inv_n)
    k = tl.load(RSTD + g * C + cols, mask=col_mask, other=0.0)
    if HAS_WEIGHT:
        k = k * tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    tl.store(DX + offsets, (dz * k[None, :]).to(DX.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------------

# Programs the two reduction kernels aim for: enough to fill a large GPU several times over, few enough that the
# fixed-order merge of their partials stays short. Tests lower it to exercise programs that loop over many tiles.
REDUCTION_PROGRAMS = 1024


class _Plan:
    """Tiling of an [groups·R, C] NHWC matrix: BLOCK_M × BLOCK_C tiles of ≈4096 elements (16 a thread at 4 warps),
    channels fastest as they are in memory; the reductions give each program `rows_per_program` rows, so each group
    has `partials` = T partial results per channel."""

    def __init__(self, R, C, groups):
        self.R, self.C, self.groups = R, C, groups
        self.block_c = min(triton.next_power_of_2(C), 64)
        # at least 16 rows and partials a block: no degenerate 1-wide reductions for the compiler, a few masked lanes
        self.block_m = max(min(4096 // self.block_c, triton.next_power_of_2(R)), 16)
        self.channel_blocks = triton.cdiv(C, self.block_c)
        tiles = triton.cdiv(R, self.block_m)
        programs = max(1, min(tiles, triton.cdiv(REDUCTION_PROGRAMS, self.channel_blocks * groups)))
        self.rows_per_program = triton.cdiv(tiles, programs) * self.block_m
        self.partials = triton.cdiv(R, self.rows_per_program)
        self.block_t = max(min(4096 // self.block_c, triton.next_power_of_2(self.partials)), 16)

    @property
    def tile_grid(self):
        return triton.cdiv(self.R, self.block_m), self.channel_blocks, self.groups

    @property
    def reduction_grid(self):
        return self.partials, self.channel_blocks, self.groups


def _as_nhwc(t):
    """[N, H, W, C] contiguous view of an NCHW-shaped tensor (a copy only when it is not channels_last)."""
    nhwc = t.permute(0, 2, 3, 1)
    return nhwc if nhwc.is_contiguous() else nhwc.contiguous()


def _dropout_args(dropout_p, rng, x):
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if dropout_p == 0.0:
        return False, 1.0, x  # x: any valid pointer; the kernels do not read RNG without DROPOUT
    return True, 1.0 / (1.0 - dropout_p), rng


def norm_act_forward(
    x,
    weight,
    bias,
    running_mean,
    running_var,
    *,
    batch_stats,
    groups,
    momentum,
    eps,
    activation,
    slope,
    dropout_p,
    rng,
    out=None,
):
    """Launch the forward. x: NCHW-shaped [N, C, H, W] (channels_last preferred). groups: 1 (batch norm) or N
    (instance norm). batch_stats: compute statistics from x (and update running_mean/running_var when given);
    False uses the running statistics. rng: int64 [seed, offset] snapshot (used when dropout_p > 0). out: optional
    preallocated NHWC [N, H, W, C] output (tests poison it).

    Returns (x_nhwc, y_nhwc, mean, rstd), the statistics fp32 [groups, C].
    """
    x_nhwc = _as_nhwc(x)
    N, H, W, C = x_nhwc.shape
    plan = _Plan(N * H * W // groups, C, groups)
    y = torch.empty_like(x_nhwc) if out is None else out
    if batch_stats:
        f32 = dict(dtype=torch.float32, device=x.device)
        count = torch.empty(groups, plan.partials, **f32)
        mean_p = torch.empty(groups, plan.partials, C, **f32)
        m2_p = torch.empty(groups, plan.partials, C, **f32)
        mean = torch.empty(groups, C, **f32)
        rstd = torch.empty(groups, C, **f32)
        _stats_partials_kernel[plan.reduction_grid](
            x_nhwc,
            count,
            mean_p,
            m2_p,
            plan.R,
            C,
            plan.partials,
            plan.rows_per_program,
            BLOCK_M=plan.block_m,
            BLOCK_C=plan.block_c,
        )
        update = running_mean is not None
        stats_finalize_kernel[(plan.channel_blocks, groups)](
            count,
            mean_p,
            m2_p,
            mean,
            rstd,
            running_mean if update else mean,
            running_var if update else rstd,
            plan.partials,
            C,
            eps,
            momentum,
            UPDATE_RUNNING=update,
            BLOCK_T=plan.block_t,
            BLOCK_C=plan.block_c,
        )
    else:
        mean = running_mean.float().reshape(1, C)
        rstd = torch.rsqrt(running_var.float() + eps).reshape(1, C)
    dropout, scale, rng_arg = _dropout_args(dropout_p, rng, x_nhwc)
    _norm_act_kernel[plan.tile_grid](
        x_nhwc,
        y,
        mean,
        rstd,
        x_nhwc if weight is None else weight,
        x_nhwc if bias is None else bias,
        rng_arg,
        plan.R,
        C,
        slope,
        dropout_p,
        scale,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        ACTIVATION=ACTIVATIONS[activation],
        DROPOUT=dropout,
        BLOCK_M=plan.block_m,
        BLOCK_C=plan.block_c,
    )
    return x_nhwc, y, mean, rstd


def norm_act_backward(
    dy,
    x_nhwc,
    weight,
    bias,
    mean,
    rstd,
    *,
    batch_stats,
    groups,
    activation,
    slope,
    dropout_p,
    rng,
    need_dw=True,
    need_db=True,
    out=None,
):
    """Launch the backward. dy: NCHW-shaped gradient of the output. x_nhwc, mean, rstd: from `norm_act_forward`.
    need_dw / need_db: write dγ / dβ (only when the weight / bias exists). out: optional preallocated
    (dx_nhwc, dw, db) (tests poison them).

    Returns (dx_nhwc, dw or None, db or None).
    """
    dy_nhwc = _as_nhwc(dy)
    N, H, W, C = x_nhwc.shape
    plan = _Plan(N * H * W // groups, C, groups)
    dx, dw, db = out if out is not None else (torch.empty_like(x_nhwc), None, None)
    need_dw = need_dw and weight is not None
    need_db = need_db and bias is not None
    if need_dw and dw is None:
        dw = torch.empty_like(weight)
    if need_db and db is None:
        db = torch.empty_like(bias)
    dropout, scale, rng_arg = _dropout_args(dropout_p, rng, x_nhwc)
    common = dict(
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        ACTIVATION=ACTIVATIONS[activation],
        DROPOUT=dropout,
        BLOCK_M=plan.block_m,
        BLOCK_C=plan.block_c,
    )
    w_arg = x_nhwc if weight is None else weight
    b_arg = x_nhwc if bias is None else bias
    sum_dz = sum_dzx = mean  # placeholders: not read unless BATCH_STATS
    if batch_stats or need_dw or need_db:
        f32 = dict(dtype=torch.float32, device=x_nhwc.device)
        sum_dz_p = torch.empty(groups, plan.partials, C, **f32)
        sum_dzx_p = torch.empty(groups, plan.partials, C, **f32)
        sum_dz = torch.empty(groups, C, **f32)
        sum_dzx = torch.empty(groups, C, **f32)
        _grad_partials_kernel[plan.reduction_grid](
            x_nhwc,
            dy_nhwc,
            mean,
            rstd,
            w_arg,
            b_arg,
            rng_arg,
            sum_dz_p,
            sum_dzx_p,
            plan.R,
            C,
            plan.partials,
            plan.rows_per_program,
            slope,
            dropout_p,
            scale,
            **common,
        )
        grad_finalize_kernel[(plan.channel_blocks,)](
            sum_dz_p,
            sum_dzx_p,
            sum_dz,
            sum_dzx,
            dw if need_dw else sum_dz,
            db if need_db else sum_dz,
            groups,
            plan.partials,
            C,
            HAS_DW=need_dw,
            HAS_DB=need_db,
            BLOCK_T=plan.block_t,
            BLOCK_C=plan.block_c,
        )
    _norm_act_backward_kernel[plan.tile_grid](
        x_nhwc,
        dy_nhwc,
        dx,
        mean,
        rstd,
        w_arg,
        b_arg,
        rng_arg,
        sum_dz,
        sum_dzx,
        plan.R,
        C,
        1.0 / plan.R,
        slope,
        dropout_p,
        scale,
        BATCH_STATS=batch_stats,
        **common,
    )
    return dx, (dw if need_dw else None), (db if need_db else None)


def dropout_mask(shape, rng_state, p):
    """The keep-mask (bool, NCHW-shaped, channels_last) the fused kernels apply for `rng_state` = [seed, offset]
    and probability `p` to an input of NCHW `shape`. Reads rng_state without advancing it."""
    N, C, H, W = shape
    numel = N * C * H * W
    keep = torch.empty(numel, dtype=torch.uint8, device=rng_state.device)
    block = 1024
    _dropout_mask_kernel[(triton.cdiv(numel, block),)](rng_state, keep, numel, p, BLOCK=block)
    return keep.view(N, H, W, C).permute(0, 3, 1, 2).bool()


# --------------------------------------------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------------------------------------------


class NormActFunction(torch.autograd.Function):
    """Autograd wiring of the fused norm + activation + dropout; see `batch_norm_act` for the arguments."""

    @staticmethod
    def forward(
        ctx,
        x,
        weight,
        bias,
        running_mean,
        running_var,
        rng,
        batch_stats,
        groups,
        momentum,
        eps,
        activation,
        slope,
        dropout_p,
    ):
        x_nhwc, y, mean, rstd = norm_act_forward(
            x,
            weight,
            bias,
            running_mean,
            running_var,
            batch_stats=batch_stats,
            groups=groups,
            momentum=momentum,
            eps=eps,
            activation=activation,
            slope=slope,
            dropout_p=dropout_p,
            rng=rng,
        )
        ctx.save_for_backward(x_nhwc, weight, bias, mean, rstd, rng)
        ctx.config = dict(
            batch_stats=batch_stats, groups=groups, activation=activation, slope=slope, dropout_p=dropout_p
        )
        return y.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, dy):
        x_nhwc, weight, bias, mean, rstd, rng = ctx.saved_tensors
        dx, dw, db = norm_act_backward(
            dy,
            x_nhwc,
            weight,
            bias,
            mean,
            rstd,
            rng=rng,
            need_dw=ctx.needs_input_grad[1],
            need_db=ctx.needs_input_grad[2],
            **ctx.config,
        )
        dx = dx.permute(0, 3, 1, 2) if ctx.needs_input_grad[0] else None
        return dx, dw, db, None, None, None, None, None, None, None, None, None, None


def _check(x, weight, bias, activation):
    if x.device.type != "meta":
        require_launchable(x, "batch_norm_act")
    if x.dim() != 4:
        raise ValueError(f"expected a 4-d NCHW-shaped input, got shape {tuple(x.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (x.shape[1],):
            raise ValueError(f"{name} has shape {tuple(p.shape)}, expected ({x.shape[1]},) for input {tuple(x.shape)}")


def _meta(z, activation, slope):
    """Shape-only (meta-device) inputs, as FLOP counting and tracing use: the eager composition gives the shapes,
    dtype and layout of the kernels' output without launching them."""
    if activation == "relu":
        z = F.relu(z)
    elif activation == "leaky_relu":
        z = F.leaky_relu(z, slope)
    return z.contiguous(memory_format=torch.channels_last)


def batch_norm_act(
    x,
    weight,
    bias,
    running_mean,
    running_var,
    training,
    momentum=0.1,
    eps=1e-5,
    activation="none",
    slope=0.2,
    dropout_p=0.0,
    rng_state=None,
):
    """y = dropout(act(BatchNorm(x))) in one fused pass per direction, autograd-enabled.

    x: [N, C, H, W], channels_last preferred (contiguous NCHW is converted), fp32/fp16/bf16; y is channels_last in
    x's dtype. weight, bias: [C] or None (affine=False). running_mean, running_var: [C] or None; with training=True
    they are updated in place like nn.BatchNorm2d (momentum, unbiased variance); with training=False they are the
    statistics used (eval mode). activation: 'none', 'relu' or 'leaky_relu' (negative slope `slope`).
    dropout_p: probability of zeroing an element (applied whenever > 0; kept elements scale by 1/(1 − p)).
    rng_state: int64 tensor [seed, offset] on x's device; this function advances rng_state[1] by x.numel() in
    place (device-side, graph-safe). None draws a fresh state from torch's generator.
    num_batches_tracked is the module's business (BatchNormAct2d).
    """
    _check(x, weight, bias, activation)
    if x.device.type == "meta":
        return _meta(
            F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps), activation, slope
        )
    if training and x.numel() // x.shape[1] <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {tuple(x.shape)}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("batch_norm_act(training=False) needs running_mean and running_var")
    rng = snapshot_and_advance(rng_state, x, dropout_p)
    return NormActFunction.apply(
        x, weight, bias, running_mean, running_var, rng, training, 1, momentum, eps, activation, slope, dropout_p
    )


def instance_norm_act(x, weight=None, bias=None, eps=1e-5, activation="none", slope=0.2, dropout_p=0.0, rng_state=None):
    """y = dropout(act(InstanceNorm(x))): statistics per (sample, channel), affine optional (pix2pix's instance norm
    has affine=False). Arguments as in `batch_norm_act`; autograd-enabled."""
    _check(x, weight, bias, activation)
    if x.device.type == "meta":
        return _meta(F.instance_norm(x, weight=weight, bias=bias, eps=eps), activation, slope)
    if x.shape[2] * x.shape[3] <= 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input of shape {tuple(x.shape)}")
    rng = snapshot_and_advance(rng_state, x, dropout_p)
    return NormActFunction.apply(
        x, weight, bias, None, None, rng, True, x.shape[0], 0.0, eps, activation, slope, dropout_p
    )
