"""Convolution with BatchNorm statistics and activation fused in: implicit-GEMM Triton kernels over NHWC, their
launchers, and the torch.autograd.Function that ties forward to backward.

One GEMM kernel (`_conv_gemm_kernel`) serves four jobs, chosen by how the caller passes the weight strides and
the TRANSPOSED flag:
  conv forward      y[oh] = Σ x[oh·s − p + kh]·w[co, ci, kh]                     gather, reduce over ci
  conv dgrad        dx    = the transposed conv of dy with the same weight          transposed, reduce over co
  ConvT forward     y[oh] = Σ_{ih·s − p + kh = oh} x[ih]·w[ci, co, kh]           transposed, reduce over ci
  ConvT dgrad       dx    = the conv of dy with the same weight                     gather, reduce over co
The transposed form is the sub-pixel decomposition: output pixels are split into s×s classes by
(oh + p) mod s, and a class only meets the taps kh ≡ (oh + p) mod s — for 4×4 stride 2 that is four 2×2-tap convs —
so no zero is ever inserted or multiplied. When a problem has too few output tiles to fill the GPU (the U-Net
bottleneck at batch 1), the taps are split (split-K): fp32 partials that `_split_k_epilogue_kernel` sums in a fixed
order before the epilogue. A second kernel (`_wgrad_kernel`) computes the weight gradient as a split-K GEMM over
output pixels, written as fp32 partials that `_wgrad_reduce_kernel` sums in a fixed order.

Fusion (docs/design.md, "The kernels' fusion"): a producer conv writes its raw output y and, in the epilogue,
per-tile (count, mean, M2) partials that `stats_finalize_kernel` (_shared.py) merges in a fixed order into
the BatchNorm mean and rstd; a consumer conv reads y and applies z = (y − mean)·k + β with k = γ·rstd, then its
activation (LeakyReLU/ReLU) and dropout, while loading the input tile: the normalised tensor is never written.
The U-Net up conv reads its two inputs (skip, up) as two sources, each with its own (mean, k, β): the concat is
never written either. G's last ConvT adds its bias and applies Tanh in the epilogue.

Backward mirrors it. The incoming gradient of a conv whose output fed BatchNorm statistics is, per channel, an
affine map of the raw output (d mean/dy = 1/n, d rstd/dy = −rstd³·(y − mean)/n), so dgrad and wgrad apply
  dy ← dy + a + b·(y − mean),  a = g_mean/n,  b = −g_rstd·rstd³/n
on load (and dy ← dy·(1 − t²) for Tanh). The dgrad epilogue recomputes z from the saved input, multiplies by the
activation derivative and dropout mask, writes dx = dz·k, and per-tile partials of Σdz and Σdz·(x − mean) from
which the gradients of the prologue's (mean, k, β) follow (`grad_finalize_kernel`, _shared.py); autograd
then carries them to γ, β and to the producer's mean/rstd — whose backward is the affine map above. Every
reduction is two-stage with a fixed order: results are bitwise reproducible.

Layout: activations are NCHW-shaped tensors stored channels_last (NHWC), weights keep torch's layout (conv
[Cout, Cin, kh, kw], ConvT [Cin, Cout, kh, kw]) and are addressed through their strides. Operands are fp32, fp16
or bf16 with fp32 accumulation; fp32 operands use TF32 exactly when torch.backends.cudnn.allow_tf32 would.
"""

import functools
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fastpix.kernels import INTERPRETED, require_launchable
from fastpix.kernels._shared import (
    ACTIVATIONS,
    activation_grad,
    apply_activation,
    dropout_scale,
    grad_finalize_kernel,
    stats_finalize_kernel,
)
from fastpix.kernels.conv_tuning import block_config

# --------------------------------------------------------------------------------------------------------------
# Jitted helpers
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _channel_params(PRM, n, row_mask, ch, ch_mask, C, PER_SAMPLE: tl.constexpr):
    """The three per-channel parameter rows of PRM, broadcastable to a [rows, channels] tile: PRM fp32 [3, C], or
    [N, 3, C] when PER_SAMPLE (instance norm; row r belongs to sample n[r])."""
    if PER_SAMPLE:
        offsets = n.to(tl.int64)[:, None] * (3 * C) + ch[None, :]
        mask = row_mask[:, None] & ch_mask[None, :]
        p0 = tl.load(PRM + offsets, mask=mask, other=0.0)
        p1 = tl.load(PRM + offsets + C, mask=mask, other=0.0)
        p2 = tl.load(PRM + offsets + 2 * C, mask=mask, other=0.0)
    else:
        p0 = tl.load(PRM + ch, mask=ch_mask, other=0.0)[None, :]
        p1 = tl.load(PRM + C + ch, mask=ch_mask, other=0.0)[None, :]
        p2 = tl.load(PRM + 2 * C + ch, mask=ch_mask, other=0.0)[None, :]
    return p0, p1, p2


@triton.jit
def _operand(
    X,
    U,
    PRM,
    RNG,
    offsets,
    mask,
    n,
    row_mask,
    ch,
    ch_mask,
    C,
    slope,
    p,
    scale,
    NORM: tl.constexpr,
    ACT: tl.constexpr,
    DROP: tl.constexpr,
    TANH_BWD: tl.constexpr,
    BN_BWD: tl.constexpr,
    PER_SAMPLE: tl.constexpr,
):
    """Load a [rows, channels] tile of X at `offsets` and apply the fused prologue, in X's dtype.

    Forward operands (a producer's raw output): v = dropout(act((x − mean)·k + β)), PRM = (mean, k, β) when NORM.
    Gradient operands: v = g·(1 − u²) when TANH_BWD (u the saved Tanh output), then v = g + a + b·(u − mean) when
    BN_BWD (u the saved raw output, PRM = (mean, a, b)). PRM: see `_channel_params` (n: each row's sample).
    Masked lanes (padding, tails) are 0 after the prologue, as the zero padding of the activated tensor requires.
    """
    v = tl.load(X + offsets, mask=mask, other=0.0)
    if NORM or ACT != 0 or DROP or TANH_BWD or BN_BWD:
        v = v.to(tl.float32)
        if NORM:
            mean, k, beta = _channel_params(PRM, n, row_mask, ch, ch_mask, C, PER_SAMPLE)
            v = (v - mean) * k + beta
        v = apply_activation(v, slope, ACT)
        if DROP:
            v = v * dropout_scale(RNG, offsets, p, scale)
        if TANH_BWD or BN_BWD:
            u = tl.load(U + offsets, mask=mask, other=0.0).to(tl.float32)
            if TANH_BWD:
                v = v * (1.0 - u * u)
            if BN_BWD:
                mean, a, b = _channel_params(PRM, n, row_mask, ch, ch_mask, C, PER_SAMPLE)
                v = v + a + b * (u - mean)
        v = tl.where(mask, v, 0.0).to(X.dtype.element_ty)
    return v


@triton.jit
def _accumulate_source(
    acc,
    X,
    U,
    PRM,
    RNG,
    W,
    pix,
    valid,
    n,
    co,
    co_mask,
    w_tap,
    C,
    c_base,
    sw_c,
    sw_o,
    slope,
    p,
    scale,
    NORM: tl.constexpr,
    ACT: tl.constexpr,
    DROP: tl.constexpr,
    TANH_BWD: tl.constexpr,
    BN_BWD: tl.constexpr,
    PER_SAMPLE: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """acc += A·B for one tap over all C channels of one source: A the [BLOCK_M, BLOCK_K] input tile at pixels
    `pix` (int64, −1-free; `valid` masks padding; n: each row's sample), B the weight tile at reduction channels
    c_base + ch."""
    for c0 in range(0, C, BLOCK_K):
        ch = c0 + tl.arange(0, BLOCK_K)
        ch_mask = ch < C
        a = _operand(
            X,
            U,
            PRM,
            RNG,
            pix[:, None] * C + ch[None, :],
            valid[:, None] & ch_mask[None, :],
            n,
            valid,
            ch,
            ch_mask,
            C,
            slope,
            p,
            scale,
            NORM,
            ACT,
            DROP,
            TANH_BWD,
            BN_BWD,
            PER_SAMPLE,
        )
        w_offsets = w_tap + (c_base + ch).to(tl.int64)[:, None] * sw_c + co.to(tl.int64)[None, :] * sw_o
        b = tl.load(W + w_offsets, mask=ch_mask[:, None] & co_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    return acc


# --------------------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _output_rows(
    pid_m,
    cls,
    classes,
    N,
    OH,
    OW,
    KH,
    KW,
    grid_m,
    tiles_per_sample,
    STRIDE: tl.constexpr,
    PAD: tl.constexpr,
    TRANSPOSED: tl.constexpr,
    PER_SAMPLE: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """The output rows of row tile pid_m of class cls: (n, qh, qw, row_mask, oh, ow) per row, the tile's index
    among the statistics partials, and the class's (taps_h, taps_w, r_h, r_w, base_h, base_w) — see
    `_conv_gemm_kernel` for the transposed form's classes. PER_SAMPLE: tiles never straddle two samples (their
    partials are per-sample statistics), tile index sample·(classes·tiles_per_sample) + class·tiles_per_sample + t;
    else tile index class·grid_m + pid_m."""
    if TRANSPOSED:
        r_h = cls // STRIDE
        r_w = cls % STRIDE
        oh0 = (r_h - PAD % STRIDE + STRIDE) % STRIDE
        ow0 = (r_w - PAD % STRIDE + STRIDE) % STRIDE
        QH = (OH - oh0 + STRIDE - 1) // STRIDE
        QW = (OW - ow0 + STRIDE - 1) // STRIDE
        base_h = (oh0 + PAD - r_h) // STRIDE
        base_w = (ow0 + PAD - r_w) // STRIDE
        taps_h = (KH - r_h + STRIDE - 1) // STRIDE
        taps_w = (KW - r_w + STRIDE - 1) // STRIDE
    else:
        r_h = 0
        r_w = 0
        oh0 = 0
        ow0 = 0
        QH = OH
        QW = OW
        base_h = 0
        base_w = 0
        taps_h = KH
        taps_w = KW
    if PER_SAMPLE:
        sample = pid_m // tiles_per_sample
        q = (pid_m % tiles_per_sample) * BLOCK_M + tl.arange(0, BLOCK_M)
        n = sample + q * 0
        row_mask = (q < QH * QW) & (n < N)  # vector & vector: the interpreter rejects a scalar & vector mask
        tile = (sample * classes + cls) * tiles_per_sample + pid_m % tiles_per_sample
    else:
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < N * QH * QW
        n = rows // (QH * QW)
        q = rows % (QH * QW)
        tile = cls * grid_m + pid_m
    qh = q // QW
    qw = q % QW
    oh = oh0 + qh * STRIDE if TRANSPOSED else qh
    ow = ow0 + qw * STRIDE if TRANSPOSED else qw
    return n, qh, qw, row_mask, oh, ow, tile, taps_h, taps_w, r_h, r_w, base_h, base_w


@triton.jit
def _epilogue(
    acc,
    n,
    oh,
    ow,
    row_mask,
    co,
    co_mask,
    tile,
    pid_n,
    OH,
    OW,
    CO,
    Y,
    BIAS,
    EX,
    EP,
    ER,
    COUNT,
    PART_A,
    PART_B,
    slope,
    ep,
    escale,
    DGRAD: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    TANH: tl.constexpr,
    STATS: tl.constexpr,
    E_NORM: tl.constexpr,
    E_ACT: tl.constexpr,
    E_DROP: tl.constexpr,
    PER_SAMPLE: tl.constexpr,
):
    """Write the output tile from the fp32 accumulator; see `_conv_gemm_kernel` for the two epilogues."""
    out_pix = ((n * OH + oh) * OW + ow).to(tl.int64)
    out_mask = row_mask[:, None] & co_mask[None, :]
    offsets = out_pix[:, None] * CO + co[None, :]
    if DGRAD:
        dz = acc
        if E_DROP:
            dz = dz * dropout_scale(ER, offsets, ep, escale)
        if E_NORM or E_ACT != 0:
            x = tl.load(EX + offsets, mask=out_mask, other=0.0).to(tl.float32)
            z = x
            if E_NORM:
                mean, k, beta = _channel_params(EP, n, row_mask, co, co_mask, CO, PER_SAMPLE)
                xc = x - mean
                z = xc * k + beta
            dz = dz * activation_grad(z, slope, E_ACT)
        if E_NORM:
            dz = tl.where(out_mask, dz, 0.0)
            tl.store(PART_A + tile.to(tl.int64) * CO + co, tl.sum(dz, axis=0), mask=co_mask)
            tl.store(
                PART_B + tile.to(tl.int64) * CO + co, tl.sum(dz * tl.where(out_mask, xc, 0.0), axis=0), mask=co_mask
            )
            dz = dz * k
        tl.store(Y + offsets, dz.to(Y.dtype.element_ty), mask=out_mask)
    else:
        out = acc
        if HAS_BIAS:
            out = out + tl.load(BIAS + co, mask=co_mask, other=0.0).to(tl.float32)[None, :]
        if STATS:
            count = tl.sum(row_mask.to(tl.float32), axis=0)
            mean_t = tl.sum(tl.where(out_mask, out, 0.0), axis=0) / tl.maximum(count, 1.0)
            d = tl.where(out_mask, out - mean_t[None, :], 0.0)
            tl.store(PART_A + tile.to(tl.int64) * CO + co, mean_t, mask=co_mask)
            tl.store(PART_B + tile.to(tl.int64) * CO + co, tl.sum(d * d, axis=0), mask=co_mask)
            if pid_n == 0:
                tl.store(COUNT + tile, count)
        if TANH:
            # tanh(v) = 1 − 2/(exp(2v) + 1): exact at ±inf and without cancellation for large |v|.
            out = 1.0 - 2.0 / (tl.exp(2.0 * out) + 1.0)
        tl.store(Y + offsets, out.to(Y.dtype.element_ty), mask=out_mask)


@triton.jit
def _conv_gemm_kernel(
    # operands: source 1 with its prologue's tensors, source 2 with its own, the weight
    X1,
    U1,
    P1,
    R1,
    X2,
    P2,
    R2,
    W,
    # epilogue: output, bias, the dgrad's forward operand, statistics partials, split-K workspace
    Y,
    BIAS,
    EX,
    EP,
    ER,
    COUNT,
    PART_A,
    PART_B,
    WS,
    # geometry: sizes, channels, the weight's strides, row tiles
    N,
    IH,
    IW,
    C1,
    C2,
    OH,
    OW,
    CO,
    KH,
    KW,
    sw_c,
    sw_o,
    sw_h,
    sw_w,
    grid_m,
    tiles_per_sample,
    # prologue and epilogue values: LeakyReLU slope, dropout (probability, scale) of source 1, 2, dgrad operand
    slope,
    p1,
    scale1,
    p2,
    scale2,
    ep,
    escale,
    # geometry (compile-time)
    STRIDE: tl.constexpr,
    PAD: tl.constexpr,
    TRANSPOSED: tl.constexpr,
    PER_SAMPLE: tl.constexpr,
    # prologue of source 1, of source 2
    NORM1: tl.constexpr,
    ACT1: tl.constexpr,
    DROP1: tl.constexpr,
    TANH_BWD: tl.constexpr,
    BN_BWD: tl.constexpr,
    HAS_X2: tl.constexpr,
    NORM2: tl.constexpr,
    ACT2: tl.constexpr,
    DROP2: tl.constexpr,
    # epilogue
    DGRAD: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    TANH: tl.constexpr,
    STATS: tl.constexpr,
    E_NORM: tl.constexpr,
    E_ACT: tl.constexpr,
    E_DROP: tl.constexpr,
    # tiling
    SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """Implicit-GEMM convolution: Y[N, OH, OW, CO] (NHWC) from X1 [N, IH, IW, C1] (and X2 [N, IH, IW, C2], whose
    channels follow X1's in the weight). Grid (grid_m, cdiv(CO, BLOCK_N), classes·SPLIT_K), classes = STRIDE² if
    TRANSPOSED else 1.

    Gather form (TRANSPOSED false): input pixel ih = oh·STRIDE − PAD + kh for every tap. Transposed form: the
    output class r = ((oh + PAD) mod STRIDE) in each dimension meets taps kh = r + STRIDE·t only, at input pixel
    ih = j + (oh0 + PAD − r)/STRIDE − t for the class's j-th output row oh = oh0 + STRIDE·j.
    The weight element (reduction channel c, output channel o, tap kh, kw) is W[c·sw_c + o·sw_o + kh·sw_h +
    kw·sw_w]. U1, P1, R1 (P2, R2): source 1 (2) prologue tensors, see `_operand`.

    SPLIT_K > 1 (few output tiles, as at the bottleneck at batch 1): split s of the class's taps writes its fp32
    partial to WS[s, class, row, o] (rows padded to grid_m·BLOCK_M) and `_split_k_epilogue_kernel` sums the splits
    in order and runs the epilogue; SPLIT_K = 1 runs it here.
    Epilogue, forward (DGRAD false): + BIAS[o], Tanh, store; with STATS, tile t = class·grid_m + program_id(0)
    writes COUNT[t] (rows), PART_A[t, o] (mean) and PART_B[t, o] (M2) of the stored values before Tanh.
    Epilogue, dgrad: the accumulator is the gradient of the forward conv's operand; EX, EP, ER are that operand's
    raw input and prologue (E_NORM, E_ACT, E_DROP). dz = acc·dropout·act'(z) with z recomputed from EX; stores
    dx = dz·k (dz without E_NORM) and, with E_NORM, PART_A[t, o] = Σdz and PART_B[t, o] = Σdz·(x − mean).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    classes = tl.num_programs(2) // SPLIT_K
    cls = tl.program_id(2) // SPLIT_K
    split = tl.program_id(2) % SPLIT_K
    n, qh, qw, row_mask, oh, ow, tile, taps_h, taps_w, r_h, r_w, base_h, base_w = _output_rows(
        pid_m, cls, classes, N, OH, OW, KH, KW, grid_m, tiles_per_sample, STRIDE, PAD, TRANSPOSED, PER_SAMPLE, BLOCK_M
    )
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    co_mask = co < CO

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    taps = taps_h * taps_w
    per_split = (taps + SPLIT_K - 1) // SPLIT_K
    for t in range(split * per_split, tl.minimum(taps, (split + 1) * per_split)):
        th = t // taps_w
        tw = t % taps_w
        if TRANSPOSED:
            kh = r_h + STRIDE * th
            ih = qh + base_h - th
            kw = r_w + STRIDE * tw
            iw = qw + base_w - tw
        else:
            kh = th
            ih = qh * STRIDE - PAD + kh
            kw = tw
            iw = qw * STRIDE - PAD + kw
        valid = row_mask & (ih >= 0) & (ih < IH) & (iw >= 0) & (iw < IW)
        pix = ((n * IH + ih) * IW + iw).to(tl.int64)
        pix = tl.where(valid, pix, 0)
        w_tap = kh.to(tl.int64) * sw_h + kw * sw_w
        acc = _accumulate_source(
            acc,
            X1,
            U1,
            P1,
            R1,
            W,
            pix,
            valid,
            n,
            co,
            co_mask,
            w_tap,
            C1,
            0,
            sw_c,
            sw_o,
            slope,
            p1,
            scale1,
            NORM1,
            ACT1,
            DROP1,
            TANH_BWD,
            BN_BWD,
            PER_SAMPLE,
            BLOCK_K,
            INPUT_PRECISION,
        )
        if HAS_X2:
            acc = _accumulate_source(
                acc,
                X2,
                None,
                P2,
                R2,
                W,
                pix,
                valid,
                n,
                co,
                co_mask,
                w_tap,
                C2,
                C1,
                sw_c,
                sw_o,
                slope,
                p2,
                scale2,
                NORM2,
                ACT2,
                DROP2,
                False,
                False,
                PER_SAMPLE,
                BLOCK_K,
                INPUT_PRECISION,
            )

    if SPLIT_K == 1:
        _epilogue(
            acc,
            n,
            oh,
            ow,
            row_mask,
            co,
            co_mask,
            tile,
            pid_n,
            OH,
            OW,
            CO,
            Y,
            BIAS,
            EX,
            EP,
            ER,
            COUNT,
            PART_A,
            PART_B,
            slope,
            ep,
            escale,
            DGRAD,
            HAS_BIAS,
            TANH,
            STATS,
            E_NORM,
            E_ACT,
            E_DROP,
            PER_SAMPLE,
        )
    else:
        rows = (tl.program_id(2).to(tl.int64) * grid_m + pid_m) * BLOCK_M + tl.arange(0, BLOCK_M)
        tl.store(WS + rows[:, None] * CO + co[None, :], acc, mask=co_mask[None, :])


@triton.jit
def _split_k_epilogue_kernel(
    WS,
    Y,
    BIAS,
    EX,
    EP,
    ER,
    COUNT,
    PART_A,
    PART_B,
    N,
    OH,
    OW,
    CO,
    KH,
    KW,
    grid_m,
    tiles_per_sample,
    slope,
    ep,
    escale,
    STRIDE: tl.constexpr,
    PAD: tl.constexpr,
    TRANSPOSED: tl.constexpr,
    SPLIT_K: tl.constexpr,
    PER_SAMPLE: tl.constexpr,
    DGRAD: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    TANH: tl.constexpr,
    STATS: tl.constexpr,
    E_NORM: tl.constexpr,
    E_ACT: tl.constexpr,
    E_DROP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The second stage of a split-K `_conv_gemm_kernel`: sums WS over the splits in split order (bitwise
    reproducible) and runs the same epilogue on the same tiles. Grid (grid_m, cdiv(CO, BLOCK_N), classes)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    cls = tl.program_id(2)
    n, qh, qw, row_mask, oh, ow, tile, taps_h, taps_w, r_h, r_w, base_h, base_w = _output_rows(
        pid_m,
        cls,
        tl.num_programs(2),
        N,
        OH,
        OW,
        KH,
        KW,
        grid_m,
        tiles_per_sample,
        STRIDE,
        PAD,
        TRANSPOSED,
        PER_SAMPLE,
        BLOCK_M,
    )
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    co_mask = co < CO
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for split in range(0, SPLIT_K):
        rows = ((cls * SPLIT_K + split).to(tl.int64) * grid_m + pid_m) * BLOCK_M + tl.arange(0, BLOCK_M)
        acc += tl.load(WS + rows[:, None] * CO + co[None, :], mask=co_mask[None, :], other=0.0)
    _epilogue(
        acc,
        n,
        oh,
        ow,
        row_mask,
        co,
        co_mask,
        tile,
        pid_n,
        OH,
        OW,
        CO,
        Y,
        BIAS,
        EX,
        EP,
        ER,
        COUNT,
        PART_A,
        PART_B,
        slope,
        ep,
        escale,
        DGRAD,
        HAS_BIAS,
        TANH,
        STATS,
        E_NORM,
        E_ACT,
        E_DROP,
        PER_SAMPLE,
    )


@triton.jit
def _wgrad_kernel(
    D,
    DU,
    DP,
    DR,
    G,
    GU,
    GP,
    GR,
    WS,
    N,
    QH,
    QW,
    GH,
    GW,
    CD,
    CG,
    KW,
    steps,
    slope,
    dp,
    dscale,
    gp,
    gscale,
    STRIDE: tl.constexpr,
    PAD: tl.constexpr,
    D_NORM: tl.constexpr,
    D_ACT: tl.constexpr,
    D_DROP: tl.constexpr,
    D_TANH_BWD: tl.constexpr,
    D_BN_BWD: tl.constexpr,
    G_NORM: tl.constexpr,
    G_ACT: tl.constexpr,
    G_DROP: tl.constexpr,
    G_TANH_BWD: tl.constexpr,
    G_BN_BWD: tl.constexpr,
    PER_SAMPLE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_G: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """Split-K weight gradient: WS[split, tap, d, g] = Σ_m D[m, d]·G[gather(m, tap), g] over the rows m of this
    split. Grid (taps·cdiv(CG, BLOCK_G), cdiv(CD, BLOCK_D), splits).

    D: the directly indexed operand [N·QH·QW, CD] (NHWC rows), G: the gathered operand [N, GH, GW, CG], read at
    gh = qh·STRIDE − PAD + kh for the row m = (n, qh, qw) and tap (kh, kw); each with its prologue (`_operand`).
    conv: D = dy, G = x, the result is dW[co, ci, kh, kw]; ConvT: D = x, G = dy, dW[ci, co, kh, kw]. steps: row
    blocks of BLOCK_M per split.
    """
    pid0 = tl.program_id(0)
    g_blocks = tl.cdiv(CG, BLOCK_G)
    tap = pid0 // g_blocks
    kh = tap // KW
    kw = tap % KW
    dch = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    gch = (pid0 % g_blocks) * BLOCK_G + tl.arange(0, BLOCK_G)
    d_mask = dch < CD
    g_mask = gch < CG
    split = tl.program_id(2)
    M = N * QH * QW
    acc = tl.zeros([BLOCK_D, BLOCK_G], dtype=tl.float32)
    for step in range(0, steps):
        rows = (split * steps + step) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        n = rows // (QH * QW)
        q = rows % (QH * QW)
        gh = (q // QW) * STRIDE - PAD + kh
        gw = (q % QW) * STRIDE - PAD + kw
        valid = row_mask & (gh >= 0) & (gh < GH) & (gw >= 0) & (gw < GW)
        d = _operand(
            D,
            DU,
            DP,
            DR,
            rows.to(tl.int64)[:, None] * CD + dch[None, :],
            row_mask[:, None] & d_mask[None, :],
            n,
            row_mask,
            dch,
            d_mask,
            CD,
            slope,
            dp,
            dscale,
            D_NORM,
            D_ACT,
            D_DROP,
            D_TANH_BWD,
            D_BN_BWD,
            PER_SAMPLE,
        )
        gpix = tl.where(valid, ((n * GH + gh) * GW + gw).to(tl.int64), 0)
        g = _operand(
            G,
            GU,
            GP,
            GR,
            gpix[:, None] * CG + gch[None, :],
            valid[:, None] & g_mask[None, :],
            n,
            valid,
            gch,
            g_mask,
            CG,
            slope,
            gp,
            gscale,
            G_NORM,
            G_ACT,
            G_DROP,
            G_TANH_BWD,
            G_BN_BWD,
            PER_SAMPLE,
        )
        acc = tl.dot(tl.trans(d), g, acc, input_precision=INPUT_PRECISION)
    taps = tl.num_programs(0) // g_blocks
    offsets = ((split.to(tl.int64) * taps + tap) * CD + dch[:, None]) * CG + gch[None, :]
    tl.store(WS + offsets, acc, mask=d_mask[:, None] & g_mask[None, :])


@triton.jit
def _wgrad_reduce_kernel(WS, DW, splits, total, CD, CG, KW, s_d, s_g, s_h, s_w, BLOCK: tl.constexpr):
    """DW[d, g, kh, kw] = Σ_split WS[split, tap, d, g], summed in split order. Grid (cdiv(total, BLOCK),),
    total = taps·CD·CG; DW addressed through its strides (s_d, s_g, s_h, s_w)."""
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(0, splits):
        acc += tl.load(WS + s * total + idx, mask=mask, other=0.0)
    g = idx % CG
    d = (idx // CG) % CD
    tap = idx // (CG * CD)
    offsets = d * s_d + g * s_g + (tap // KW) * s_h + (tap % KW) * s_w
    tl.store(DW + offsets, acc.to(DW.dtype.element_ty), mask=mask)


@triton.jit
def _channel_sum_partials_kernel(
    X,
    U,
    PRM,
    PART,
    R,
    C,
    HW,
    TANH_BWD: tl.constexpr,
    BN_BWD: tl.constexpr,
    PER_SAMPLE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """PART[t, c] = Σ over rows of tile t of the gradient operand X [R, C] after its prologue (the bias gradient's
    first stage); HW rows per sample. Grid (cdiv(R, BLOCK_M), cdiv(C, BLOCK_C))."""
    t = tl.program_id(0)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ch_mask = ch < C
    rows = t * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < R
    mask = row_mask[:, None] & ch_mask[None, :]
    v = _operand(
        X,
        U,
        PRM,
        None,
        rows.to(tl.int64)[:, None] * C + ch[None, :],
        mask,
        rows // HW,
        row_mask,
        ch,
        ch_mask,
        C,
        0.0,
        0.0,
        1.0,
        False,
        0,
        False,
        TANH_BWD,
        BN_BWD,
        PER_SAMPLE,
    )
    tl.store(PART + t.to(tl.int64) * C + ch, tl.sum(v.to(tl.float32), axis=0), mask=ch_mask)


# --------------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Operand:
    """One operand tensor of a launch and the prologue applied while loading it (see `_operand`).

    x: the tensor, NHWC-contiguous [N, H, W, C]. prm: fp32 [3, C], (mean, k, β) for a forward operand with
    BatchNorm, (mean, a, b) for a gradient with `bn_bwd`; None without. act: ACTIVATIONS code. rng, p: dropout
    state [seed, offset] and probability (p = 0: none). u: the saved output a gradient prologue reads
    (`tanh_bwd`: the Tanh output; `bn_bwd`: the raw output). slope: LeakyReLU's negative slope.
    """

    x: torch.Tensor
    prm: torch.Tensor | None = None
    act: int = 0
    rng: torch.Tensor | None = None
    p: float = 0.0
    u: torch.Tensor | None = None
    tanh_bwd: bool = False
    bn_bwd: bool = False
    slope: float = 0.2

    @property
    def channels(self):
        return self.x.shape[3]

    def tensors(self):
        """(X, U, PRM, RNG) as the kernels take them: None for a tensor the flags say the kernel does not read."""
        return (self.x, self.u if self.tanh_bwd or self.bn_bwd else None, self.prm, self.rng if self.p > 0 else None)

    def dropout(self):
        """(p, 1/(1 − p)) as the kernels take them."""
        return self.p, (1.0 / (1.0 - self.p) if self.p > 0 else 1.0)

    def flags(self, prefix=""):
        return {
            prefix + "NORM": self.prm is not None and not self.bn_bwd,
            prefix + "ACT": self.act,
            prefix + "DROP": self.p > 0,
            prefix + "TANH_BWD": self.tanh_bwd,
            prefix + "BN_BWD": self.bn_bwd,
        }


@dataclass(frozen=True)
class Geometry:
    """The conv one GEMM launch computes: `batch` images from `in_hw` to `out_hw` with a `kernel` (KH, KW) at
    `stride` and `padding`; transposed: the sub-pixel form, one output class per (oh, ow) mod stride (see
    `_conv_gemm_kernel`)."""

    batch: int
    in_hw: tuple
    out_hw: tuple
    kernel: tuple
    stride: int
    padding: int
    transposed: bool

    @property
    def classes(self) -> int:
        return self.stride * self.stride if self.transposed else 1

    @property
    def class_hw(self) -> tuple:
        """Output rows and columns of one class."""
        OH, OW = self.out_hw
        return (triton.cdiv(OH, self.stride), triton.cdiv(OW, self.stride)) if self.transposed else (OH, OW)

    @property
    def class_taps(self) -> int:
        KH, KW = self.kernel
        return triton.cdiv(KH, self.stride) * triton.cdiv(KW, self.stride) if self.transposed else KH * KW

    def sizes(self) -> dict:
        return dict(N=self.batch, OH=self.out_hw[0], OW=self.out_hw[1], KH=self.kernel[0], KW=self.kernel[1])

    def constexprs(self) -> dict:
        return dict(STRIDE=self.stride, PAD=self.padding, TRANSPOSED=self.transposed)


@dataclass(frozen=True)
class Epilogue:
    """What a GEMM does with its fp32 accumulator. Forward: + bias, Tanh, and with `stats` the per-tile BatchNorm
    statistics partials. dgrad_of: the forward Operand whose gradient this launch computes: its dropout mask and its
    activation's derivative are applied, and with its norm the per-tile partial sums of that norm's gradient."""

    out_channels: int
    bias: torch.Tensor | None = None
    tanh: bool = False
    stats: bool = False
    dgrad_of: Operand | None = None

    @property
    def norm_sums(self) -> bool:
        """The dgrad of a normalised operand: partial sums of its norm's gradient."""
        return self.dgrad_of is not None and self.dgrad_of.prm is not None

    def tensors(self) -> dict:
        e = self.dgrad_of
        EX, _, EP, ER = e.tensors() if e is not None else (None, None, None, None)
        return dict(BIAS=self.bias, EX=EX, EP=EP, ER=ER)

    def values(self) -> dict:
        ep, escale = self.dgrad_of.dropout() if self.dgrad_of is not None else (0.0, 1.0)
        return dict(ep=ep, escale=escale)

    def constexprs(self) -> dict:
        e = self.dgrad_of
        return dict(
            DGRAD=e is not None,
            HAS_BIAS=self.bias is not None,
            TANH=self.tanh,
            STATS=self.stats,
            E_NORM=self.norm_sums,
            E_ACT=e.act if e is not None else 0,
            E_DROP=e is not None and e.p > 0,
        )


class Tiling(NamedTuple):
    """Block sizes and launch options of one GEMM: rows, then the two channel blocks (`_conv_gemm_kernel`: output
    and reduction channels; `_wgrad_kernel`: the direct and the gathered operand's), warps, pipeline stages."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


def _input_precision(dtype):
    # fp32 operands follow cuDNN's switch (TF32 by default on GPUs that have it); the interpreter computes exactly.
    if dtype == torch.float32 and (INTERPRETED or not torch.backends.cudnn.allow_tf32):
        return "ieee"
    return "tf32"


def _tuning_key(problem: str, dtype, constexprs: dict) -> str:
    """A launch's identity in the block-size cache: its problem's shapes, dtype and compile-time flags."""
    flags = ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in sorted(constexprs.items()))
    return f"{problem} {str(dtype)[6:]} {flags}"


def _shared_slope(operands) -> float:
    """The LeakyReLU slope of a launch's operands (one value reaches the kernel: they must agree)."""
    slopes = {o.slope for o in operands if o is not None and o.act == ACTIVATIONS["leaky_relu"]}
    if len(slopes) > 1:
        raise ValueError(f"the LeakyReLU slopes of one conv's operands must agree, got {sorted(slopes)}")
    return slopes.pop() if slopes else 0.0


# The interpreter's cost is per operation, not per element: its tiles grow with the problem (fewer programs and
# loop steps), rows staying ≤ M/2 so that every launch still has several row tiles (and partials to merge).
def _interpreter_rows(M):
    return max(16, min(512, triton.next_power_of_2(M) // 2))


def _interpreter_channels(C):
    return max(16, min(32, triton.next_power_of_2(C)))


def _interpreter_tiling(M, C_a, C_b) -> Tiling:
    """The tiling under the interpreter for M rows and the two channel counts of a GEMM."""
    return Tiling(_interpreter_rows(M), _interpreter_channels(C_a), _interpreter_channels(C_b), 1, 1)


# GPU candidates, the first the default while nothing may be measured. Tiles wider than the problem only waste
# lanes, so they are dropped (tl.dot needs every side ≥ 16).
_GEMM_CONFIGS = [
    Tiling(*c)
    for c in (
        (64, 64, 32, 4, 3),
        (128, 64, 32, 4, 3),
        (64, 128, 32, 4, 3),
        (128, 128, 32, 8, 3),
        (128, 128, 64, 8, 3),
        (64, 64, 64, 4, 4),
        (32, 64, 64, 4, 4),
        (128, 32, 32, 4, 4),
        (32, 32, 64, 4, 3),
    )
]
_WGRAD_CONFIGS = [
    Tiling(*c)
    for c in (
        (32, 64, 64, 4, 3),
        (64, 64, 64, 4, 3),
        (32, 128, 64, 4, 3),
        (32, 64, 128, 4, 3),
        (64, 128, 128, 8, 3),
        (32, 32, 32, 4, 3),
        (64, 32, 64, 4, 3),
        (64, 64, 32, 4, 3),
    )
]


def _fits(block, size):
    return block <= max(32, triton.next_power_of_2(size))


def _gemm_candidates(M, CO):
    return [c for c in _GEMM_CONFIGS if _fits(c.block_m, M) and _fits(c.block_n, CO)] or _GEMM_CONFIGS[-1:]


def _wgrad_candidates(CD, CG):
    return [c for c in _WGRAD_CONFIGS if _fits(c.block_n, CD) and _fits(c.block_k, CG)] or _WGRAD_CONFIGS[5:6]


def _merge_config(C, T):
    """(BLOCK_T, BLOCK_C) of the fixed-order merges of per-tile partials."""
    block_c = min(triton.next_power_of_2(C), 64)
    return min(max(4096 // block_c, 1), triton.next_power_of_2(T)), block_c


def output_size(size, kernel, stride, padding, transposed):
    """The spatial output size of a conv (or ConvT, without output padding) along one dimension."""
    if transposed:
        return (size - 1) * stride - 2 * padding + kernel
    return (size + 2 * padding - kernel) // stride + 1


def _source_args(first: Operand, second: Operand | None):
    """The kernel arguments of the GEMM's one or two sources: (tensors and values, compile-time prologue flags)."""
    X1, U1, P1, R1 = first.tensors()
    p1, scale1 = first.dropout()
    f = first.flags()
    args = dict(X1=X1, U1=U1, P1=P1, R1=R1, C1=first.channels, p1=p1, scale1=scale1)
    flags = dict(
        NORM1=f["NORM"],
        ACT1=f["ACT"],
        DROP1=f["DROP"],
        TANH_BWD=f["TANH_BWD"],
        BN_BWD=f["BN_BWD"],
        HAS_X2=second is not None,
        NORM2=False,
        ACT2=0,
        DROP2=False,
    )
    if second is None:
        return {**args, "X2": None, "P2": None, "R2": None, "C2": 0, "p2": 0.0, "scale2": 1.0}, flags
    X2, _, P2, R2 = second.tensors()
    p2, scale2 = second.dropout()
    flags.update(NORM2=P2 is not None, ACT2=second.act, DROP2=p2 > 0)
    return {**args, "X2": X2, "P2": P2, "R2": R2, "C2": second.channels, "p2": p2, "scale2": scale2}, flags


def conv_gemm(
    sources, weight, strides, geometry: Geometry, epilogue: Epilogue, *, per_sample=False, tuning=None, out=None
):
    """Launch `_conv_gemm_kernel` (and, split-K, `_split_k_epilogue_kernel`). sources: one or two Operands (two
    only in the forward). weight: read through `strides`, (reduction channel, output channel, kh, kw). per_sample:
    statistics, their gradients and every operand's parameters are per sample (instance norm). tuning: the model's
    ConvTuning (block sizes; None: the first candidate). out: preallocated NHWC output.

    Returns (y, partials): y NHWC [N, OH, OW, CO]; partials (count, part_a, part_b, samples) with statistics or the
    dgrad of a normalised operand (count None there), else None; samples: N per sample, else None.
    """
    first, second = sources[0], (sources[1] if len(sources) > 1 else None)
    g, CO = geometry, epilogue.out_channels
    N, (QH, QW), M = g.batch, g.class_hw, g.batch * g.class_hw[0] * g.class_hw[1]
    if epilogue.stats and g.transposed and (g.out_hw[0] % g.stride or g.out_hw[1] % g.stride):
        raise ValueError(
            f"BatchNorm statistics of a transposed conv need an output size divisible by the stride "
            f"{g.stride}, got {g.out_hw[0]}×{g.out_hw[1]}"
        )
    y = out if out is not None else torch.empty((N, *g.out_hw, CO), dtype=first.x.dtype, device=first.x.device)
    operands, prologue = _source_args(first, second)
    values = dict(slope=_shared_slope((first, second, epilogue.dgrad_of)), **epilogue.values())
    sizes = dict(g.sizes(), CO=CO)
    constexprs = dict(
        **g.constexprs(),
        PER_SAMPLE=per_sample,
        **prologue,
        **epilogue.constexprs(),
        INPUT_PRECISION=_input_precision(first.x.dtype),
    )
    epilogue_constexprs = dict(**g.constexprs(), PER_SAMPLE=per_sample, **epilogue.constexprs())

    def launch(tiling: Tiling):
        rows = dict(tiles_per_sample=triton.cdiv(QH * QW, tiling.block_m))
        rows["grid_m"] = N * rows["tiles_per_sample"] if per_sample else triton.cdiv(M, tiling.block_m)
        n_blocks = triton.cdiv(CO, tiling.block_n)
        split_k = _split_k_count(rows["grid_m"] * n_blocks * g.classes, g.class_taps)
        f32 = functools.partial(torch.empty, dtype=torch.float32, device=y.device)
        T = g.classes * rows["grid_m"]
        count = f32(T) if epilogue.stats else None
        part_a = part_b = partials = None
        if epilogue.stats or epilogue.norm_sums:
            part_a, part_b = f32(T, CO), f32(T, CO)
            partials = (count, part_a, part_b, N if per_sample else None)
        ws = f32(g.classes * split_k, rows["grid_m"] * tiling.block_m, CO) if split_k > 1 else None
        outputs = dict(Y=y, **epilogue.tensors(), COUNT=count, PART_A=part_a, PART_B=part_b, WS=ws)
        _conv_gemm_kernel[(rows["grid_m"], n_blocks, g.classes * split_k)](
            **operands,
            W=weight,
            **outputs,
            IH=g.in_hw[0],
            IW=g.in_hw[1],
            **sizes,
            sw_c=strides[0],
            sw_o=strides[1],
            sw_h=strides[2],
            sw_w=strides[3],
            **rows,
            **values,
            **constexprs,
            SPLIT_K=split_k,
            BLOCK_M=tiling.block_m,
            BLOCK_N=tiling.block_n,
            BLOCK_K=tiling.block_k,
            num_warps=tiling.num_warps,
            num_stages=tiling.num_stages,
        )
        if split_k > 1:
            _split_k_epilogue_kernel[(rows["grid_m"], n_blocks, g.classes)](
                **outputs,
                **sizes,
                **rows,
                **values,
                **epilogue_constexprs,
                SPLIT_K=split_k,
                BLOCK_M=tiling.block_m,
                BLOCK_N=tiling.block_n,
                num_warps=tiling.num_warps,
            )
        return y, partials

    if INTERPRETED:
        return launch(_interpreter_tiling(QH * QW if per_sample else M, CO, max(operands["C1"], operands["C2"])))
    key = _tuning_key(
        f"{N}x{g.in_hw[0]}x{g.in_hw[1]}x{operands['C1']}+{operands['C2']} -> {g.out_hw[0]}x"
        f"{g.out_hw[1]}x{CO} k{g.kernel[0]}x{g.kernel[1]}",
        first.x.dtype,
        constexprs,
    )
    return launch(Tiling(*block_config(tuning, "conv_gemm", key, _gemm_candidates(M, CO), launch)))


def _split_k_count(programs, taps):
    """Splits of a conv's taps (split-K) when its output tiles alone would leave the GPU mostly idle — the
    bottleneck layers at batch 1 have a handful of output tiles and 16 taps × 512 channels to reduce."""
    if INTERPRETED:
        return 1
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return 1 if programs >= sms else max(1, min(taps, triton.cdiv(2 * sms, programs)))


def _split_count(tiles, row_blocks):
    """Splits of the wgrad reduction: enough programs to fill the GPU twice over (the bottleneck layers at batch 1
    have few output tiles and long reductions), never more than the row blocks."""
    if INTERPRETED:
        return min(2, row_blocks)
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return max(1, min(row_blocks, triton.cdiv(2 * sms, tiles), 64))


def conv_wgrad(direct, gathered, kernel, stride, padding, out, per_sample=False, tuning=None):
    """Weight gradient into `out` [CD, CG, KH, KW] (a strided view): out[d, g, kh, kw] = Σ_m direct[m, d]·
    gathered[gather(m, kh, kw), g], gather(m) = (qh·stride − padding + kh, qw·stride − padding + kw) for the
    direct operand's row m = (n, qh, qw). Split-K partials, then a fixed-order sum (bitwise reproducible).
    tuning: the model's ConvTuning (block sizes; None: the first candidate)."""
    N, QH, QW, CD = direct.x.shape
    _, GH, GW, CG = gathered.x.shape
    KH, KW = kernel
    taps = KH * KW
    D, DU, DP, DR = direct.tensors()
    G, GU, GP, GR = gathered.tensors()
    dp, dscale = direct.dropout()
    gp, gscale = gathered.dropout()
    operands = dict(D=D, DU=DU, DP=DP, DR=DR, G=G, GU=GU, GP=GP, GR=GR)
    values = dict(
        N=N,
        QH=QH,
        QW=QW,
        GH=GH,
        GW=GW,
        CD=CD,
        CG=CG,
        KW=KW,
        dp=dp,
        dscale=dscale,
        gp=gp,
        gscale=gscale,
        slope=_shared_slope((direct, gathered)),
    )
    constexprs = dict(
        STRIDE=stride,
        PAD=padding,
        **direct.flags("D_"),
        **gathered.flags("G_"),
        PER_SAMPLE=per_sample,
        INPUT_PRECISION=_input_precision(direct.x.dtype),
    )
    M = N * QH * QW

    def launch(tiling: Tiling):
        row_blocks = triton.cdiv(M, tiling.block_m)
        tiles = taps * triton.cdiv(CG, tiling.block_k) * triton.cdiv(CD, tiling.block_n)
        steps = triton.cdiv(row_blocks, _split_count(tiles, row_blocks))
        splits = triton.cdiv(row_blocks, steps)
        ws = torch.empty(splits, taps, CD, CG, dtype=torch.float32, device=out.device)
        _wgrad_kernel[(taps * triton.cdiv(CG, tiling.block_k), triton.cdiv(CD, tiling.block_n), splits)](
            **operands,
            WS=ws,
            **values,
            steps=steps,
            **constexprs,
            BLOCK_M=tiling.block_m,
            BLOCK_D=tiling.block_n,
            BLOCK_G=tiling.block_k,
            num_warps=tiling.num_warps,
            num_stages=tiling.num_stages,
        )
        total = taps * CD * CG
        block = 1024
        _wgrad_reduce_kernel[(triton.cdiv(total, block),)](
            ws, out, splits, total, CD, CG, KW, *out.stride(), BLOCK=block
        )
        return out

    if INTERPRETED:
        return launch(_interpreter_tiling(M, CD, CG))
    key = _tuning_key(f"{N}x{QH}x{QW}x{CD} * {GH}x{GW}x{CG} k{KH}x{KW}", direct.x.dtype, constexprs)
    return launch(Tiling(*block_config(tuning, "conv_wgrad", key, _wgrad_candidates(CD, CG), launch)))


def bias_grad(grad, out, per_sample=False):
    """out[c] = Σ over pixels of the gradient operand `grad` after its prologue, in a fixed order."""
    N, H, W, C = grad.x.shape
    R = N * H * W
    block_c = min(triton.next_power_of_2(C), 64)
    block_m = _interpreter_rows(R) if INTERPRETED else max(4096 // block_c, 16)
    T = triton.cdiv(R, block_m)
    part = torch.empty(T, C, dtype=torch.float32, device=out.device)
    X, U, PRM, _ = grad.tensors()
    _channel_sum_partials_kernel[(T, triton.cdiv(C, block_c))](
        X,
        U,
        PRM,
        part,
        R,
        C,
        H * W,
        TANH_BWD=grad.tanh_bwd,
        BN_BWD=grad.bn_bwd,
        PER_SAMPLE=per_sample,
        BLOCK_M=block_m,
        BLOCK_C=block_c,
    )
    sums = torch.empty(2, C, dtype=torch.float32, device=out.device)
    block_t, block_c = _merge_config(C, T)
    # The sums of Σdz·(x − mean) are not needed here: the one partial tensor stands in for both inputs.
    grad_finalize_kernel[(triton.cdiv(C, block_c),)](
        part, part, sums[0], sums[1], None, out, 1, T, C, HAS_DW=False, HAS_DB=True, BLOCK_T=block_t, BLOCK_C=block_c
    )
    return out


def finalize_stats(partials, C, running_mean, running_var, momentum, eps):
    """(mean, rstd) fp32 [C] ([N, C] per sample) from the forward epilogue's per-tile (count, mean, M2), merged in
    a fixed order; running_mean/running_var (when given) are updated in place like nn.BatchNorm2d's."""
    count, mean_p, m2_p, samples = partials
    groups = samples or 1
    T = count.numel() // groups
    stats = torch.empty(2, groups, C, dtype=torch.float32, device=count.device)
    update = running_mean is not None
    block_t, block_c = _merge_config(C, T)
    stats_finalize_kernel[(triton.cdiv(C, block_c), groups)](
        count,
        mean_p,
        m2_p,
        stats[0],
        stats[1],
        running_mean,
        running_var,
        T,
        C,
        eps,
        momentum,
        UPDATE_RUNNING=update,
        BLOCK_T=block_t,
        BLOCK_C=block_c,
    )
    return (stats[0], stats[1]) if samples else (stats[0, 0], stats[1, 0])


def finalize_sums(partials, C):
    """(Σdz, Σdz·(x − mean)) fp32 [C] ([N, C] per sample) from the dgrad epilogue's per-tile partials, summed in
    a fixed order."""
    _, part_a, part_b, samples = partials
    groups = samples or 1
    T = part_a.shape[0] // groups
    sums = torch.empty(2, groups, C, dtype=torch.float32, device=part_a.device)
    block_t, block_c = _merge_config(C, T)
    grad_finalize_kernel[(triton.cdiv(C, block_c),)](
        part_a,
        part_b,
        sums[0],
        sums[1],
        None,
        None,
        groups,
        T,
        C,
        HAS_DW=False,
        HAS_DB=False,
        BLOCK_T=block_t,
        BLOCK_C=block_c,
    )
    return (sums[0], sums[1]) if samples else (sums[0, 0], sums[1, 0])


# --------------------------------------------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvSpec:
    """The static description of one fused conv: geometry, how each source is read, what the epilogue does.

    activation, dropout_p: per source (x, x2). stats: the epilogue produces BatchNorm statistics (and updates
    the running ones) with momentum and eps. tanh: the epilogue applies Tanh (G's last layer). per_sample:
    statistics and the sources' (mean, k, β) are per sample (instance norm). tuning: the ConvTuning of the model
    this conv belongs to (its kernels' block sizes), None for the first candidates.
    """

    stride: int = 1
    padding: int = 0
    transposed: bool = False
    activation: tuple = ("none", "none")
    dropout_p: tuple = (0.0, 0.0)
    slope: float = 0.2
    stats: bool = False
    momentum: float = 0.1
    eps: float = 1e-5
    tanh: bool = False
    per_sample: bool = False
    tuning: object = field(default=None, compare=False, repr=False)


def _nhwc(t):
    """[N, H, W, C] contiguous view of an NCHW-shaped tensor (a copy only when it is not channels_last)."""
    nhwc = t.permute(0, 2, 3, 1)
    return nhwc if nhwc.is_contiguous() else nhwc.contiguous()


def _params(*columns, samples=None):
    """The kernels' parameter block: fp32 [3, C] from three [C] tensors, or [N, 3, C] per sample (`samples` = N;
    [C] columns are broadcast to every sample)."""
    if samples is None:
        return torch.stack([c.detach().float().reshape(-1) for c in columns]).contiguous()
    C = columns[0].shape[-1]
    return torch.stack([c.detach().float().expand(samples, C) for c in columns], 1).contiguous()


def _gemm_weight(weight, dtype, out_dim):
    """`weight` in `dtype` with the same shape, stored with dimension `out_dim` (the GEMM's output channel)
    fastest, then the reduction channel, then the taps: the kernels' weight tiles [reduction, output] are then
    contiguous along the output channels (coalesced, vectorised loads)."""
    order = (2, 3, 1 - out_dim, out_dim)
    inverse = sorted(range(4), key=order.__getitem__)
    return weight.to(dtype).permute(order).contiguous().permute(inverse)


def _weight_layout(weight, transposed):
    """(in_channels, out_channels, forward strides, dgrad strides) for a conv [Co, Ci, kh, kw] or ConvT
    [Ci, Co, kh, kw] weight; strides as (reduction channel, output channel, kh, kw)."""
    s = weight.stride()
    if transposed:
        return weight.shape[0], weight.shape[1], (s[0], s[1], s[2], s[3]), (s[1], s[0], s[2], s[3])
    return weight.shape[1], weight.shape[0], (s[1], s[0], s[2], s[3]), (s[0], s[1], s[2], s[3])


# forward's arguments in order (ctx.needs_input_grad follows them), and each source's differentiable ones.
_FORWARD_ARGS = (
    "spec",
    "x",
    "mean",
    "k",
    "beta",
    "x2",
    "mean2",
    "k2",
    "beta2",
    "rng",
    "rng2",
    "weight",
    "bias",
    "running_mean",
    "running_var",
)
_SOURCE_ARGS = (("x", "mean", "k", "beta"), ("x2", "mean2", "k2", "beta2"))


class ConvBNActFunction(torch.autograd.Function):
    """Autograd wiring of the fused conv; see `conv_bn_act` for the arguments."""

    @staticmethod
    def forward(ctx, spec, x, mean, k, beta, x2, mean2, k2, beta2, rng, rng2, weight, bias, running_mean, running_var):
        norms = (None if mean is None else (mean, k, beta), None if mean2 is None else (mean2, k2, beta2))
        xs = [_nhwc(x)] + ([] if x2 is None else [_nhwc(x2)])
        samples = x.shape[0] if spec.per_sample else None
        prms = [None if nm is None else _params(*nm, samples=samples) for nm in norms[: len(xs)]]
        rngs = (rng, rng2)
        ops = [
            Operand(xi, prms[i], ACTIVATIONS[spec.activation[i]], rngs[i], spec.dropout_p[i], slope=spec.slope)
            for i, xi in enumerate(xs)
        ]
        w = _gemm_weight(weight, x.dtype, 1 if spec.transposed else 0)
        _, c_out, strides, _ = _weight_layout(w, spec.transposed)
        KH, KW = w.shape[2], w.shape[3]
        N, H, W, _ = xs[0].shape
        out_size = (
            output_size(H, KH, spec.stride, spec.padding, spec.transposed),
            output_size(W, KW, spec.stride, spec.padding, spec.transposed),
        )
        geometry = Geometry(N, (H, W), out_size, (KH, KW), spec.stride, spec.padding, spec.transposed)
        y, partials = conv_gemm(
            ops,
            w,
            strides,
            geometry,
            Epilogue(c_out, bias, spec.tanh, spec.stats),
            per_sample=spec.per_sample,
            tuning=spec.tuning,
        )
        mean_out = rstd_out = None
        if spec.stats:
            mean_out, rstd_out = finalize_stats(partials, c_out, running_mean, running_var, spec.momentum, spec.eps)
        ctx.spec = spec
        ctx.compute_dtype = x.dtype
        ctx.num_sources = len(xs)
        ctx.has_norm = tuple(p is not None for p in prms)
        ctx.norm_dims = tuple(None if nm is None else nm[0].dim() for nm in norms)
        ctx.save_for_backward(
            *xs,
            *[p for p in prms if p is not None],
            *[r for r in rngs[: len(xs)] if r is not None],
            weight,
            bias,
            y if spec.tanh or spec.stats else None,
            mean_out,
            rstd_out,
        )
        ctx.has_rng = tuple(r is not None for r in rngs[: len(xs)])
        y_nchw = y.permute(0, 3, 1, 2)
        if spec.stats:
            return y_nchw, mean_out, rstd_out
        return y_nchw

    @staticmethod
    def backward(ctx, gy, gmean=None, grstd=None):
        spec = ctx.spec
        saved = list(ctx.saved_tensors)
        xs = [saved.pop(0) for _ in range(ctx.num_sources)]
        prms = [saved.pop(0) if has else None for has in ctx.has_norm]
        rngs = [saved.pop(0) if has else None for has in ctx.has_rng]
        weight, bias, y, mean_out, rstd_out = saved
        ops = [
            Operand(xi, prms[i], ACTIVATIONS[spec.activation[i]], rngs[i], spec.dropout_p[i], slope=spec.slope)
            for i, xi in enumerate(xs)
        ]
        g = _nhwc(gy.to(ctx.compute_dtype))
        grad = Operand(g)
        if spec.tanh:
            grad = Operand(g, u=y, tanh_bwd=True)
        elif spec.stats and (gmean is not None or grstd is not None):
            n = g.shape[1] * g.shape[2] * (1 if spec.per_sample else g.shape[0])  # values per statistic
            a = torch.zeros_like(mean_out) if gmean is None else gmean.float() / n
            b = torch.zeros_like(rstd_out) if grstd is None else -grstd.float() * rstd_out**3 / n
            grad = Operand(
                g, prm=_params(mean_out, a, b, samples=g.shape[0] if spec.per_sample else None), u=y, bn_bwd=True
            )
        KH, KW = weight.shape[2], weight.shape[3]
        needs = dict(zip(_FORWARD_ARGS, ctx.needs_input_grad))
        # dgrad reads the weight with the input channels as its output channels
        if any(needs[name] for names in _SOURCE_ARGS for name in names):
            w = _gemm_weight(weight, ctx.compute_dtype, 0 if spec.transposed else 1)
            d_strides = _weight_layout(w, spec.transposed)[3]
        grads = {}
        c0 = 0
        for i, (op, names) in enumerate(zip(ops, _SOURCE_ARGS)):
            cs = op.channels
            dx = dmean = dk = dbeta = None
            if any(needs[name] for name in names):
                w_slice = w[c0 : c0 + cs] if spec.transposed else w[:, c0 : c0 + cs]
                geometry = Geometry(
                    g.shape[0],
                    tuple(g.shape[1:3]),
                    tuple(op.x.shape[1:3]),
                    (KH, KW),
                    spec.stride,
                    spec.padding,
                    not spec.transposed,
                )
                dx, partials = conv_gemm(
                    [grad],
                    w_slice,
                    d_strides,
                    geometry,
                    Epilogue(cs, dgrad_of=op),
                    per_sample=spec.per_sample,
                    tuning=spec.tuning,
                )
                dx = dx.permute(0, 3, 1, 2)
                if op.prm is not None:
                    sum_dz, sum_dzx = finalize_sums(partials, cs)
                    k = op.prm[:, 1] if spec.per_sample else op.prm[1]
                    dims = ctx.norm_dims[i]
                    dmean, dk, dbeta = (t.sum(0) if t.dim() > dims else t for t in (-k * sum_dz, sum_dzx, sum_dz))
            grads.update(zip(names, (dx, dmean, dk, dbeta)))
            c0 += cs
        if needs["weight"]:
            dw = grads["weight"] = torch.empty_like(weight, memory_format=torch.contiguous_format)
            c0 = 0
            for op in ops:
                cs = op.channels
                if spec.transposed:
                    conv_wgrad(
                        op, grad, (KH, KW), spec.stride, spec.padding, dw[c0 : c0 + cs], spec.per_sample, spec.tuning
                    )
                else:
                    conv_wgrad(
                        grad, op, (KH, KW), spec.stride, spec.padding, dw[:, c0 : c0 + cs], spec.per_sample, spec.tuning
                    )
                c0 += cs
        if bias is not None and needs["bias"]:
            grads["bias"] = bias_grad(grad, torch.empty_like(bias), spec.per_sample)
        return tuple(grads.get(name) for name in _FORWARD_ARGS)


def _check(x, weight, x2, transposed, norm, norm2, activation, stats, tanh, per_sample, running):
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(
            f"expected a 4-d NCHW-shaped input and a 4-d weight, got input {tuple(x.shape)} and "
            f"weight {tuple(weight.shape)}"
        )
    c_in = weight.shape[0] if transposed else weight.shape[1]
    channels = x.shape[1] + (0 if x2 is None else x2.shape[1])
    if channels != c_in:
        kind = "ConvTranspose weight [in, out, kh, kw]" if transposed else "conv weight [out, in, kh, kw]"
        raise ValueError(
            f"input channels {channels} (input {tuple(x.shape)}"
            f"{'' if x2 is None else f' + second source {tuple(x2.shape)}'}) do not match the {kind} "
            f"{tuple(weight.shape)}"
        )
    if x2 is not None and (x2.shape[0] != x.shape[0] or x2.shape[2:] != x.shape[2:] or x2.dtype != x.dtype):
        raise ValueError(
            f"the two sources must share batch, size and dtype: {tuple(x.shape)} {x.dtype} vs "
            f"{tuple(x2.shape)} {x2.dtype}"
        )
    for name, nm, src in (("norm", norm, x), ("norm2", norm2, x2)):
        if nm is None or src is None:
            continue
        shapes = [(src.shape[1],)] + ([(src.shape[0], src.shape[1])] if per_sample else [])
        if len(nm) != 3 or any(tuple(t.shape) not in shapes for t in nm):
            raise ValueError(f"{name} must be (mean, k, beta), each of shape {' or '.join(map(str, shapes))}")
    if per_sample and running:
        raise ValueError("per-sample (instance norm) statistics keep no running statistics")
    for a in activation:
        if a not in ACTIVATIONS:
            raise ValueError(f"activation {a!r} is not one of {', '.join(ACTIVATIONS)}")
    if stats and tanh:
        raise ValueError("stats and tanh exclude each other: BatchNorm never follows G's Tanh")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"conv_bn_act supports float32, float16 and bfloat16 inputs, got {x.dtype}")
    require_launchable(x, "conv_bn_act")


def conv_bn_act(
    x,
    weight,
    bias=None,
    stride=1,
    padding=0,
    *,
    transposed=False,
    norm=None,
    activation="none",
    dropout_p=0.0,
    rng=None,
    x2=None,
    norm2=None,
    activation2="none",
    dropout_p2=0.0,
    rng2=None,
    slope=0.2,
    stats=False,
    running_mean=None,
    running_var=None,
    momentum=0.1,
    eps=1e-5,
    tanh=False,
    per_sample=False,
    tuning=None,
):
    """A conv (transposed=False, weight [Cout, Cin, kh, kw]) or ConvTranspose (weight [Cin, Cout, kh, kw]) of
    the activated input, as one fused Triton kernel per direction; autograd-enabled.

    The conv's input is, per source, dropout(act((x − mean)·k + β)) — the producer's BatchNorm with
    k = γ·rstd (`norm = (mean, k, beta)`, each [C]; None: x as is), then `activation` ('none', 'relu',
    'leaky_relu' with `slope`) and dropout with probability `dropout_p` from the counter RNG `rng` (int64
    [seed, offset], the convention of batch_norm_act.py). `x2` is a second source whose channels follow x's in the
    weight (the U-Net's concat, never materialised), read with norm2/activation2/dropout_p2/rng2.
    x, x2: NCHW-shaped, channels_last preferred; fp32, fp16 or bf16 (the weight is cast to x's dtype; its gradient
    comes back in its own dtype). bias: [Cout] or None. tanh: apply Tanh to the output.
    stats: also return the output's BatchNorm statistics (mean, rstd), fp32 [Cout], and update running_mean /
    running_var in place (momentum, unbiased variance) when given. per_sample: instance norm instead — statistics
    per (sample, channel), [N, Cout], and the norm triples may be [N, C] too. tuning: the ConvTuning
    (kernels/conv_tuning.py) of the model this conv belongs to, whose measured block sizes the kernels take; None:
    the first candidates.

    Returns y (NCHW-shaped, channels_last, x's dtype), or (y, mean, rstd) with stats.
    """
    _check(
        x,
        weight,
        x2,
        transposed,
        norm,
        norm2,
        (activation, activation2),
        stats,
        tanh,
        per_sample,
        running_mean is not None or running_var is not None,
    )
    spec = ConvSpec(
        stride,
        padding,
        transposed,
        (activation, activation2),
        (dropout_p, dropout_p2),
        slope,
        stats,
        momentum,
        eps,
        tanh,
        per_sample,
        tuning,
    )
    n1 = norm if norm is not None else (None, None, None)
    n2 = norm2 if norm2 is not None else (None, None, None)
    return ConvBNActFunction.apply(spec, x, *n1, x2, *n2, rng, rng2, weight, bias, running_mean, running_var)


def batch_norm_prologue(mean, rstd, weight, bias):
    """The (mean, k, beta) a consumer conv applies for a BatchNorm (or, with [N, C] statistics, an instance norm)
    with statistics (mean, rstd) and affine (weight, bias) (either None: no affine), as differentiable tensors:
    k = γ·rstd."""
    k = rstd if weight is None else weight * rstd
    beta = torch.zeros_like(mean) if bias is None else bias.expand_as(mean)
    return mean, k, beta
