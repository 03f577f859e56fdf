"""What the kernel files share (internal to fastpix.kernels): the activation codes, the jitted activation and
dropout helpers, the fixed-order merges of per-program partials (BatchNorm statistics, gradient sums, a loss's
block sums), the dropout RNG bookkeeping, and one fix of Triton 3.6's interpreter.

Each kernel file imports from here and from no other kernel file's internals.
"""

import torch
import triton
import triton.language as tl

from fastpix.kernels import INTERPRETED

ACTIVATIONS = {"none": 0, "relu": 1, "leaky_relu": 2}


@triton.jit
def apply_activation(z, slope, ACTIVATION: tl.constexpr):
    if ACTIVATION == 1:
        z = tl.where(z > 0, z, 0.0)
    elif ACTIVATION == 2:
        z = tl.where(z > 0, z, z * slope)
    return z


@triton.jit
def activation_grad(z, slope, ACTIVATION: tl.constexpr):
    # The derivative at z == 0 follows torch: relu and leaky_relu backward test `input > 0`.
    if ACTIVATION == 1:
        g = tl.where(z > 0, 1.0, 0.0)
    elif ACTIVATION == 2:
        g = tl.where(z > 0, 1.0, slope)
    else:
        g = tl.full(z.shape, 1.0, tl.float32)
    return g


@triton.jit
def dropout_scale(rng_ptr, offsets, p, scale):
    """scale where the element is kept (u ≥ p), 0 where dropped; u from Philox at counter rng_ptr[1] + offsets."""
    seed = tl.load(rng_ptr)
    base = tl.load(rng_ptr + 1)
    u = tl.rand(seed, base + offsets)
    return tl.where(u >= p, scale, 0.0)


@triton.jit
def stats_finalize_kernel(
    COUNT,
    MEAN_P,
    M2_P,
    MEAN,
    RSTD,
    RUNNING_MEAN,
    RUNNING_VAR,
    T,
    C,
    eps,
    momentum,
    UPDATE_RUNNING: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Merge the per-program (count, mean, M2) of a group in a fixed order into its per-channel mean and rstd.
    Grid (cdiv(C, BLOCK_C), groups).

    COUNT: fp32 [groups, T]. MEAN_P, M2_P: fp32 [groups, T, C] partials. MEAN, RSTD: fp32 [groups, C] outputs (rstd
    of the biased variance). RUNNING_MEAN, RUNNING_VAR: [C] running statistics updated in place when UPDATE_RUNNING
    (one group): r ← (1 − momentum)·r + momentum·s, the variance unbiased by n/(n − 1) as torch does. T: partials per
    group. C: channels. BLOCK_T: partials merged per step. BLOCK_C: channels per program.
    """
    cb = tl.program_id(0)
    g = tl.program_id(1)
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    # Means relative to the first partial's, for the reason given in `_stats_partials_kernel` (0 when that
    # partial counted no rows: its mean is then undefined).
    shift = tl.load(MEAN_P + (g * T).to(tl.int64) * C + cols, mask=col_mask, other=0.0)
    shift = tl.where(tl.load(COUNT + g * T) > 0, shift, 0.0)
    n_a = tl.zeros([BLOCK_C], tl.float32)
    mean_a = tl.zeros([BLOCK_C], tl.float32)
    m2_a = tl.zeros([BLOCK_C], tl.float32)
    for t0 in range(0, T, BLOCK_T):
        tiles = t0 + tl.arange(0, BLOCK_T)
        tile_mask = tiles < T
        mask = tile_mask[:, None] & col_mask[None, :]
        offsets = (g * T + tiles).to(tl.int64)[:, None] * C + cols[None, :]
        n_t = tl.load(COUNT + g * T + tiles, mask=tile_mask, other=0.0)[:, None]
        mask = mask & (n_t > 0)  # a partial that counted no rows holds no mean or M2
        mean_t = tl.where(mask, tl.load(MEAN_P + offsets, mask=mask, other=0.0) - shift[None, :], 0.0)
        m2_t = tl.load(M2_P + offsets, mask=mask, other=0.0)
        # This block of partials as one partial: the exact multi-way form of Chan's merge ...
        n_b = tl.sum(n_t, axis=0)
        mean_b = tl.sum(n_t * mean_t, axis=0) / tl.maximum(n_b, 1.0)
        d = tl.where(mask, mean_t - mean_b[None, :], 0.0)
        m2_b = tl.sum(m2_t, axis=0) + tl.sum(n_t * d * d, axis=0)
        # ... merged into the running partial: only differences of means are squared, so a large |mean|/std
        # cannot cancel catastrophically as E[x²] − E[x]² would. (max(·, 1): blocks of empty partials add 0.)
        n_ab = n_a + n_b
        delta = mean_b - mean_a
        mean_a = mean_a + delta * (n_b / tl.maximum(n_ab, 1.0))
        m2_a = m2_a + m2_b + delta * delta * (n_a * n_b / tl.maximum(n_ab, 1.0))
        n_a = n_ab
    var = m2_a / n_a
    mean_a += shift
    tl.store(MEAN + g * C + cols, mean_a, mask=col_mask)
    tl.store(RSTD + g * C + cols, 1.0 / tl.sqrt(var + eps), mask=col_mask)
    if UPDATE_RUNNING:
        running_mean = tl.load(RUNNING_MEAN + cols, mask=col_mask, other=0.0).to(tl.float32)
        running_var = tl.load(RUNNING_VAR + cols, mask=col_mask, other=0.0).to(tl.float32)
        unbiased = m2_a / (n_a - 1.0)
        tl.store(RUNNING_MEAN + cols, running_mean + momentum * (mean_a - running_mean), mask=col_mask)
        tl.store(RUNNING_VAR + cols, running_var + momentum * (unbiased - running_var), mask=col_mask)


@triton.jit
def grad_finalize_kernel(
    SUM_DZ_P,
    SUM_DZX_P,
    SUM_DZ,
    SUM_DZX,
    DW,
    DB,
    G,
    T,
    C,
    HAS_DW: tl.constexpr,
    HAS_DB: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Sum the tile partials in a fixed order. Grid (cdiv(C, BLOCK_C),).

    SUM_DZ_P, SUM_DZX_P: fp32 [G, T, C] partials. SUM_DZ, SUM_DZX: fp32 [G, C] per-group sums. DW, DB: dγ = ΣΣdz·x̂
    and dβ = ΣΣdz over all groups [C], in the parameters' dtype (written when HAS_DW / HAS_DB). G: groups. T: tiles
    per group. C: channels. BLOCK_T: tiles summed per step. BLOCK_C: channels per program.
    """
    cb = tl.program_id(0)
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    dw = tl.zeros([BLOCK_C], tl.float32)
    db = tl.zeros([BLOCK_C], tl.float32)
    for g in range(G):
        s_dz = tl.zeros([BLOCK_C], tl.float32)
        s_dzx = tl.zeros([BLOCK_C], tl.float32)
        for t0 in range(0, T, BLOCK_T):
            tiles = t0 + tl.arange(0, BLOCK_T)
            mask = (tiles < T)[:, None] & col_mask[None, :]
            offsets = (g * T + tiles).to(tl.int64)[:, None] * C + cols[None, :]
            s_dz += tl.sum(tl.load(SUM_DZ_P + offsets, mask=mask, other=0.0), axis=0)
            s_dzx += tl.sum(tl.load(SUM_DZX_P + offsets, mask=mask, other=0.0), axis=0)
        tl.store(SUM_DZ + g * C + cols, s_dz, mask=col_mask)
        tl.store(SUM_DZX + g * C + cols, s_dzx, mask=col_mask)
        dw += s_dzx
        db += s_dz
    if HAS_DW:
        tl.store(DW + cols, dw, mask=col_mask)
    if HAS_DB:
        tl.store(DB + cols, db, mask=col_mask)


@triton.jit
def sum_partials_kernel(PARTIALS, OUT, count, scale, BLOCK: tl.constexpr):
    """OUT[0] = scale · Σ PARTIALS, summed in a fixed order by a single program. Grid (1,).

    PARTIALS: fp32 [count] block sums. OUT: fp32 [1]. count: number of partials. scale: the factor applied to the
    total (1/N for a mean). BLOCK: partials loaded per step.
    """
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, count, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        acc += tl.load(PARTIALS + offsets, mask=offsets < count, other=0.0)
    tl.store(OUT, tl.sum(acc, axis=0) * scale)


def sum_partials(partials, scale):
    """A fp32 0-d tensor scale·Σpartials, deterministic (one program, fixed order), without host synchronisation."""
    out = torch.empty((), dtype=torch.float32, device=partials.device)
    block = max(min(triton.next_power_of_2(partials.numel()), 1024), 16)
    sum_partials_kernel[(1,)](partials, out, partials.numel(), scale, BLOCK=block)
    return out


def dense(t):
    """t itself when its elements are densely packed (contiguous or channels_last), else a contiguous copy: the
    kernels read memory in storage order, which is all an elementwise loss needs."""
    if t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t
    return t.contiguous()


def snapshot_and_advance(rng_state, x, dropout_p):
    """A device copy of [seed, offset] for this call (backward regenerates the mask from it), then offset += numel."""
    if dropout_p == 0.0:
        return None
    if rng_state is None:
        # No state given: a fresh one from torch's generator (reproducible under torch.manual_seed).
        return torch.randint(0, 2**62, (2,), dtype=torch.int64, device=x.device)
    if rng_state.dtype != torch.int64 or rng_state.numel() != 2 or rng_state.device != x.device:
        raise ValueError(
            f"rng_state must be an int64 tensor [seed, offset] on {x.device}, got "
            f"{rng_state.dtype} shape {tuple(rng_state.shape)} on {rng_state.device}"
        )
    snapshot = rng_state.clone()
    rng_state[1:].add_(x.numel())
    return snapshot


def _fix_interpreter_index():
    """Triton < 3.7's interpreter turns a scalar into a Python index with int() on a 1-element 1-d numpy array
    (triton/runtime/interpreter.py `_patch_lang_tensor`: `__index__ = int(self.handle.data)`), which numpy >= 2.4
    refuses ("only 0-dimensional arrays can be converted to Python scalars"): every `range()` whose bound is a
    tensor (a program's row range) fails under the interpreter. Triton 3.7 squeezes the array first; this applies
    the same fix to older interpreters. Compiled kernels are unaffected (they never run this code)."""
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "fastpix_fixed", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patch_lang_tensor.fastpix_fixed = True
    interpreter._patch_lang_tensor = patch_lang_tensor


if INTERPRETED and tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 7):
    _fix_interpreter_index()
