"""What the suites share: which configuration runs, the roof a row's '% of roof' is against, the environment each
JSON records, and timing that waits for the GPU.

The configuration is the pytest option --cpu-config (conftest.py): on a GPU always 'gpu' (the reference's sizes);
on a CPU 'reduced' (small models, runnable anywhere), 'real' (unet_256 ngf 64 at 256², few rounds) or 'dry' (tiny
shapes and no compiler builds: seconds, `make gpu-check DRY=1`'s and the tests' smoke run). Each suite maps these
names to its own settings.
"""

from __future__ import annotations

import os
import platform
import subprocess

import torch

CONFIGURATIONS = ("reduced", "real", "dry")


def configuration_name(pytest_config) -> str:
    """'gpu' on a CUDA machine, else the --cpu-config this pytest run was given."""
    return "gpu" if torch.cuda.is_available() else pytest_config.getoption("--cpu-config")


def roof(device: torch.device, precision: str):
    """The peak a row's '% of roof' is against (fastpix.peaks.roof: on a GPU its datasheet peak or a measured
    matmul, on a CPU a large matmul or GEMM-shaped conv of that precision timed in this process)."""
    from fastpix.peaks import roof as device_roof

    return device_roof(device, precision)


def git_revision():
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=os.path.dirname(__file__),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_machine() -> dict:
    """What a CPU result records of where it ran (bench/'s stand-alone scripts): the CPU, its threads and features,
    torch, the load average at the time and the git revision."""
    from fastpix import runtime

    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cpu_features": runtime.cpu_features(),
        "torch": torch.__version__,
        "load_average": os.getloadavg(),
        "git": git_revision(),
    }


def environment():
    import triton

    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "git": git_revision(),
        "cpu_count": os.cpu_count(),
    }


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def roof_info(device: torch.device, precision: str, flops_per_s: float) -> dict:
    """A row's extra_info about its roof: the fraction of it reached, the roof in TFLOP/s and where it comes from."""
    peak = roof(device, precision)
    return {"fraction_of_peak": flops_per_s / peak.flops, "roof_tflops": peak.flops / 1e12, "roof": peak.describe()}
