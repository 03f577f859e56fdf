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
    machine_info["fastpix"] = environment()


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
