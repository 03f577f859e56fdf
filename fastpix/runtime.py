"""Where and how a network runs: the device, the precision, autocast, TF32 and Triton's interpreter switch.

Decided here once for training, inference, evaluation and the CLI (the Predictor's whole plan: infer/plan.py). Imports
only torch, the standard library and fastpix.errors, so every layer of fastpix may use it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys

import torch

from fastpix.errors import ConfigError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_device(device=None) -> torch.device:
    """The device asked for, else cuda when there is one, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 matmuls/convs in hardware (AVX-512 BF16 or AMX): there bf16 autocast is
    ~2x fp32; elsewhere oneDNN emulates bf16 and it is slower than fp32. oneDNN's own check decides where torch has
    it; /proc/cpuinfo where it does not."""
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    if check is not None:
        try:
            supported = bool(check())
        except RuntimeError:
            supported = None
        if supported is not None:
            # oneDNN also answers True for AVX-512 (core) CPUs it emulates bf16 on: ask for the instructions too.
            flags = _cpuinfo_flags()
            return supported and (not flags or bool(flags & {"avx512_bf16", "amx_bf16"}))
    return bool(_cpuinfo_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_features() -> str:
    """What compiled CPU code depends on: torch's vector ISA level and whether bf16 is native."""
    return f"{torch.backends.cpu.get_cpu_capability()}{'+bf16' if cpu_has_native_bf16() else ''}"


def resolve_precision(precision, device: torch.device | str) -> str:
    """The precision asked for, else bf16 where the device computes it natively (GPUs that support it, CPUs with
    AVX-512 BF16 / AMX), else fp32."""
    if precision is not None:
        if precision not in PRECISIONS:
            raise ConfigError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def autocast(device_type: str, precision: str, cache_enabled: bool = True):
    """torch.autocast for bf16/fp16, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=PRECISIONS[precision], cache_enabled=cache_enabled)


def set_tf32(enabled: bool):
    """TF32 for fp32 convolutions and matmuls. PyTorch leaves it on for cuDNN convolutions by default, which would
    make '--precision fp32' quietly run at ~1e-3 relative error; fastpix turns it on only when asked."""
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on", "y")


def use_triton_interpreter() -> None:
    """Let backend='triton' run on the CPU, through Triton's interpreter (correct, very slow: for checking).

    Triton picks compiled or interpreted kernels when a kernel module is imported, so TRITON_INTERPRET=1 is set
    here, before the first fastpix.kernels import; once the kernels are loaded compiled it is too late, and this
    says so rather than failing later inside a launch.
    """
    if triton_interpreted():
        return
    if "fastpix.kernels.batch_norm_act" in sys.modules:
        raise RuntimeError(
            "--backend triton on the CPU needs Triton's interpreter, but the kernels were already "
            "imported without it: set TRITON_INTERPRET=1 before starting Python, or use --backend "
            "eager"
        )
    os.environ["TRITON_INTERPRET"] = "1"


def channels_last(device, precision: str) -> bool:
    """Whether networks and batches go channels-last: always on CUDA (cuDNN's tensor-core layout); on the CPU with
    bf16 only, where oneDNN's native bf16 convolutions want NHWC. fp32 on a CPU stays NCHW: the reference's layout,
    and its exact numbers."""
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and precision == "bf16")
