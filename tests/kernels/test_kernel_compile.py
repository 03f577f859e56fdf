"""Every @triton.jit kernel compiles for an H100 / H200 (sm_90: Triton front end, PTX, ptxas), checked on a
machine without a GPU, under the Triton this process has (CI: 3.9 in .venv and 3.6, the GPU machine's, in .venv36;
`make test` runs this file in both).

The interpreter runs the kernels' logic but not Triton's compiler, which has its own rules (types across branches,
tuple returns, dot shapes, shared memory). Compiling ahead of time needs no device; it needs a process where the
kernels were decorated without TRITON_INTERPRET, so the test runs this file as a script, which also checks that
no kernel of fastpix.kernels was left out.
"""

import inspect
import os
import subprocess
import sys

import pytest

COMPILED = set()


def _compile(kernel, pointers, constexprs, floats=(), num_warps=4, num_stages=3, unread=()):
    """Compile `kernel` for sm_90. unread: pointer parameters passed as None, as the launchers pass the tensors a
    launch's flags leave unread (Triton specialises them as constexpr None)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    params = inspect.signature(kernel.fn).parameters
    constexprs = {**constexprs, **dict.fromkeys(unread)}
    signature = {
        p: "constexpr" if p in constexprs else pointers.get(p, "fp32" if p in floats else "i32") for p in params
    }
    COMPILED.add(kernel.fn.__name__)
    return triton.compile(
        ASTSource(kernel, signature, constexprs=constexprs),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": num_warps, "num_stages": num_stages},
    )


def _unread_epilogue(c):
    """The epilogue's pointers a launch with flags `c` passes as None (kernels/conv_bn_act.py, Epilogue)."""
    unread = {
        "BIAS": not c["HAS_BIAS"],
        "EX": not c["DGRAD"],
        "EP": not c["E_NORM"],
        "ER": not c["E_DROP"],
        "COUNT": not c["STATS"],
        "PART_A": not (c["STATS"] or c["E_NORM"]),
        "PART_B": not (c["STATS"] or c["E_NORM"]),
        "WS": c["SPLIT_K"] == 1,
    }
    return [name for name, none in unread.items() if none]


def _gemm(cba, dtype, **flags):
    constexprs = dict(
        STRIDE=2,
        PAD=1,
        TRANSPOSED=False,
        SPLIT_K=1,
        NORM1=True,
        ACT1=2,
        DROP1=False,
        TANH_BWD=False,
        BN_BWD=False,
        HAS_X2=False,
        NORM2=False,
        ACT2=0,
        DROP2=False,
        DGRAD=False,
        HAS_BIAS=False,
        TANH=False,
        STATS=True,
        E_NORM=False,
        E_ACT=0,
        E_DROP=False,
        PER_SAMPLE=False,
        BLOCK_M=128,
        BLOCK_N=128,
        BLOCK_K=64,
        INPUT_PRECISION="tf32",
    )
    constexprs.update(flags)
    pointers = {k: f"*{dtype}" for k in ("X1", "U1", "X2", "W", "Y", "EX")}
    pointers.update({k: "*fp32" for k in ("P1", "P2", "EP", "BIAS", "COUNT", "PART_A", "PART_B", "WS")})
    pointers.update({k: "*i64" for k in ("R1", "R2", "ER")})
    c = constexprs  # the sources' unread tensors, as Operand.tensors passes them
    unread = _unread_epilogue(c) + [
        name
        for name, none in (
            ("U1", not (c["TANH_BWD"] or c["BN_BWD"])),
            ("P1", not (c["NORM1"] or c["BN_BWD"])),
            ("R1", not c["DROP1"]),
            ("X2", not c["HAS_X2"]),
            ("P2", not c["NORM2"]),
            ("R2", not c["DROP2"]),
        )
        if none
    ]
    _compile(
        cba._conv_gemm_kernel,
        pointers,
        constexprs,
        ("slope", "p1", "scale1", "p2", "scale2", "ep", "escale"),
        num_warps=8,
        unread=unread,
    )


def _wgrad(cba, dtype, **flags):
    constexprs = dict(
        STRIDE=2,
        PAD=1,
        D_NORM=False,
        D_ACT=0,
        D_DROP=False,
        D_TANH_BWD=False,
        D_BN_BWD=True,
        G_NORM=True,
        G_ACT=2,
        G_DROP=False,
        G_TANH_BWD=False,
        G_BN_BWD=False,
        PER_SAMPLE=False,
        BLOCK_M=64,
        BLOCK_D=128,
        BLOCK_G=128,
        INPUT_PRECISION="tf32",
    )
    constexprs.update(flags)
    pointers = {
        "D": f"*{dtype}",
        "DU": f"*{dtype}",
        "DP": "*fp32",
        "DR": "*i64",
        "G": f"*{dtype}",
        "GU": f"*{dtype}",
        "GP": "*fp32",
        "GR": "*i64",
        "WS": "*fp32",
    }
    unread = [
        name
        for side in ("D", "G")
        for name, none in (
            (f"{side}U", not (constexprs[f"{side}_TANH_BWD"] or constexprs[f"{side}_BN_BWD"])),
            (f"{side}P", not (constexprs[f"{side}_NORM"] or constexprs[f"{side}_BN_BWD"])),
            (f"{side}R", not constexprs[f"{side}_DROP"]),
        )
        if none
    ]
    _compile(
        cba._wgrad_kernel, pointers, constexprs, ("slope", "dp", "dscale", "gp", "gscale"), num_warps=8, unread=unread
    )


def compile_all():
    from fastpix.kernels import conv_bn_act as cba

    _gemm(cba, "bf16")  # down conv: BatchNorm + LeakyReLU prologue, statistics epilogue
    _gemm(cba, "bf16", TRANSPOSED=True, HAS_X2=True, NORM2=True, ACT1=1, ACT2=1, DROP2=True)  # up conv
    _gemm(cba, "bf16", PER_SAMPLE=True, HAS_BIAS=True)  # instance norm
    _gemm(
        cba,
        "bf16",
        TRANSPOSED=True,
        NORM1=False,
        ACT1=0,
        BN_BWD=True,
        STATS=False,
        DGRAD=True,
        E_NORM=True,
        E_ACT=1,
        E_DROP=True,
        SPLIT_K=4,
    )  # a dgrad, split-K
    _gemm(
        cba,
        "fp32",
        STRIDE=1,
        PAD=0,
        KH=1,
        KW=1,
        STATS=False,
        HAS_BIAS=True,
        TANH=True,
        INPUT_PRECISION="ieee",
        BLOCK_M=64,
        BLOCK_N=64,
        BLOCK_K=32,
    )  # 1×1, fp32, bias + Tanh
    epilogue = dict(
        STRIDE=2,
        PAD=1,
        TRANSPOSED=False,
        SPLIT_K=4,
        DGRAD=False,
        HAS_BIAS=False,
        TANH=False,
        STATS=True,
        E_NORM=False,
        E_ACT=0,
        E_DROP=False,
        PER_SAMPLE=True,
        BLOCK_M=64,
        BLOCK_N=64,
    )
    _compile(
        cba._split_k_epilogue_kernel,
        {
            "WS": "*fp32",
            "Y": "*bf16",
            "BIAS": "*fp32",
            "EX": "*bf16",
            "EP": "*fp32",
            "ER": "*i64",
            "COUNT": "*fp32",
            "PART_A": "*fp32",
            "PART_B": "*fp32",
        },
        epilogue,
        ("slope", "ep", "escale"),
        unread=_unread_epilogue(epilogue),
    )
    _wgrad(cba, "bf16")
    _wgrad(
        cba,
        "fp16",
        D_NORM=True,
        D_ACT=1,
        D_DROP=True,
        D_BN_BWD=False,
        G_NORM=False,
        G_ACT=0,
        G_TANH_BWD=True,
        PER_SAMPLE=True,
    )
    _compile(cba._wgrad_reduce_kernel, {"WS": "*fp32", "DW": "*fp32"}, dict(BLOCK=1024))
    _compile(
        cba._channel_sum_partials_kernel,
        {"X": "*bf16", "U": "*bf16", "PRM": "*fp32", "PART": "*fp32"},
        dict(TANH_BWD=False, BN_BWD=True, PER_SAMPLE=True, BLOCK_M=64, BLOCK_C=64),
    )
    _compile(
        cba._channel_sum_partials_kernel,
        {"X": "*bf16", "U": "*bf16", "PART": "*fp32"},
        dict(TANH_BWD=True, BN_BWD=False, PER_SAMPLE=False, BLOCK_M=64, BLOCK_C=64),
        unread=("PRM",),
    )


def compile_norms():
    from fastpix.kernels import _shared
    from fastpix.kernels import batch_norm_act as bna

    tiles = dict(BLOCK_M=64, BLOCK_C=64)
    flags = dict(HAS_WEIGHT=True, HAS_BIAS=True, ACTIVATION=2, DROPOUT=True)
    for dtype in ("bf16", "fp16"):
        io = {k: f"*{dtype}" for k in ("X", "Y", "DY", "DX")}
        prm = {
            k: "*fp32"
            for k in ("MEAN", "RSTD", "W", "B", "COUNT", "MEAN_P", "M2_P", "SUM_DZ_P", "SUM_DZX_P", "SUM_DZ", "SUM_DZX")
        }
        ptrs = {**io, **prm, "RNG": "*i64"}
        _compile(bna._stats_partials_kernel, ptrs, tiles)
        _compile(bna._norm_act_kernel, ptrs, {**flags, **tiles}, ("slope", "p", "scale"))
        _compile(bna._grad_partials_kernel, ptrs, {**flags, **tiles}, ("slope", "p", "scale"))
        _compile(
            bna._norm_act_backward_kernel,
            ptrs,
            {**flags, "BATCH_STATS": True, **tiles},
            ("inv_n", "slope", "p", "scale"),
        )
    _compile(bna._dropout_mask_kernel, {"RNG": "*i64", "KEEP": "*u8"}, dict(BLOCK=1024), ("p",))
    fp32 = "*fp32"
    _compile(
        _shared.stats_finalize_kernel,
        dict.fromkeys(("COUNT", "MEAN_P", "M2_P", "MEAN", "RSTD", "RUNNING_MEAN", "RUNNING_VAR"), fp32),
        dict(UPDATE_RUNNING=True, BLOCK_T=64, BLOCK_C=64),
        ("eps", "momentum"),
    )
    _compile(
        _shared.grad_finalize_kernel,
        dict.fromkeys(("SUM_DZ_P", "SUM_DZX_P", "SUM_DZ", "SUM_DZX", "DW", "DB"), fp32),
        dict(HAS_DW=True, HAS_DB=True, BLOCK_T=64, BLOCK_C=64),
    )
    _compile(_shared.sum_partials_kernel, {"PARTIALS": fp32, "OUT": fp32}, dict(BLOCK=1024), ("scale",))
    # as the conv kernels' launchers call them: no running statistics, the sums only (None for what is not written)
    _compile(
        _shared.stats_finalize_kernel,
        dict.fromkeys(("COUNT", "MEAN_P", "M2_P", "MEAN", "RSTD"), fp32),
        dict(UPDATE_RUNNING=False, BLOCK_T=64, BLOCK_C=64),
        ("eps", "momentum"),
        unread=("RUNNING_MEAN", "RUNNING_VAR"),
    )
    _compile(
        _shared.grad_finalize_kernel,
        dict.fromkeys(("SUM_DZ_P", "SUM_DZX_P", "SUM_DZ", "SUM_DZX"), fp32),
        dict(HAS_DW=False, HAS_DB=False, BLOCK_T=64, BLOCK_C=64),
        unread=("DW", "DB"),
    )


def compile_losses():
    from fastpix.kernels import l1_loss, patchgan_loss

    for mode in (0, 1):  # vanilla (BCE with logits), lsgan
        _compile(
            patchgan_loss._patchgan_loss_kernel,
            {"X": "*bf16", "DX": "*fp32", "PARTIALS": "*fp32"},
            dict(TARGET=1, MODE=mode, WRITE_GRAD=True, BLOCK=2048),
            ("inv_numel",),
        )
    _compile(
        l1_loss._l1_loss_kernel,
        {"X": "*bf16", "Y": "*fp32", "SIGN": "*i8", "PARTIALS": "*fp32"},
        dict(WRITE_SIGN=True, BLOCK=2048),
    )
    _compile(
        l1_loss._l1_backward_kernel,
        {"SIGN": "*i8", "GRAD_OUTPUT": "*fp32", "DX": "*bf16", "DY": "*fp32"},
        dict(WRITE_DX=True, WRITE_DY=True, BLOCK=2048),
        ("scale",),
    )


def all_kernels() -> set:
    """The names of every @triton.jit function of fastpix.kernels that is a kernel (launched, not a helper)."""
    import importlib

    import triton

    names = set()
    for module in ("_shared", "batch_norm_act", "conv_bn_act", "l1_loss", "patchgan_loss"):
        mod = importlib.import_module(f"fastpix.kernels.{module}")
        names |= {
            name
            for name, obj in vars(mod).items()
            if isinstance(obj, triton.runtime.JITFunction) and name.endswith("_kernel")
        }
    return names


def test_every_kernel_compiles_for_sm90(tmp_path):
    pytest.importorskip("triton.backends.nvidia", reason="this Triton build has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from an earlier run's cache
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


if __name__ == "__main__":
    compile_all()
    compile_norms()
    compile_losses()
    missed = all_kernels() - COMPILED
    if missed:
        sys.exit(f"kernels never compiled here: {', '.join(sorted(missed))}")
