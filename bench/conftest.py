"""Shared by every benchmark: the environment each JSON records, and timing that waits for the GPU.

Run: pytest bench --benchmark-json=bench/results/<file>.json (or `fastpix bench`). Every timed function ends in a
synchronisation on CUDA, so pytest-benchmark's timer measures finished work; comparisons are made side by side in
one run (same process, same inputs), and each benchmark stores its derived figures in extra_info.
"""
import os
import platform
import subprocess
import sys

import pytest
import torch

# the kernel tests' input factories (tests/kernels/harness.py): a benchmark times exactly what a test checked
sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "kernels"))

# The CPU configuration of the suites: 'reduced' (small models, runnable anywhere) or 'real' (the reference's
# unet_256 ngf 64 at 256², few rounds), from --cpu-config.
CPU_CONFIG = {"value": "reduced"}


def pytest_addoption(parser):
    parser.addoption("--cpu-config", choices=("reduced", "real"), default="reduced",
                     help="on a CPU: reduced (small models) or real (unet_256 ngf 64 at 256²) (default: reduced)")


def pytest_configure(config):
    CPU_CONFIG["value"] = config.getoption("--cpu-config")


def cpu_real() -> bool:
    """True for the real-size CPU configuration (read when a suite module is imported, after pytest_configure)."""
    return not torch.cuda.is_available() and CPU_CONFIG["value"] == "real"


_ROOF = {}


def peak(device: torch.device, precision: str):
    """The peak a row's '% of roof' is against: on a GPU its datasheet peak (fastpix.train.flops), on a CPU a
    large matmul or GEMM-shaped conv of that precision timed in this run (once per session)."""
    from fastpix.train.flops import cpu_roof_flops, peak_flops

    if device.type == "cuda":
        return peak_flops(device, precision)
    if precision not in _ROOF:
        _ROOF[precision] = cpu_roof_flops(torch.bfloat16 if precision == "bf16" else torch.float32)
    return _ROOF[precision]


def git_revision():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=os.path.dirname(__file__),
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment():
    import triton

    return {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
            "torch": torch.__version__, "triton": triton.__version__, "git": git_revision(),
            "cpu_count": os.cpu_count()}


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["fastpix"] = {**environment(), "cpu_config": CPU_CONFIG["value"],
                               "cpu_roofline_flops": dict(_ROOF)}


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
