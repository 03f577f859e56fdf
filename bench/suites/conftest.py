"""pytest's side of the suites: the --cpu-config option, the environment each JSON records, the device fixture.

Run: `fastpix bench` (or pytest bench/suites --benchmark-json=<file>). Every timed function ends in a
synchronisation on CUDA, so pytest-benchmark's timer measures finished work; comparisons are made side by side in
one run (same process, same inputs), and each benchmark stores its derived figures in extra_info.
"""

import pytest
import torch

from fastpix.bench_suites import common


def pytest_addoption(parser):
    parser.addoption(
        "--cpu-config",
        choices=common.CONFIGURATIONS,
        default="reduced",
        help="on a CPU: reduced (small models), real (unet_256 ngf 64 at 256²) or dry (tiny shapes, "
        "no compiler builds: a smoke run) (default: reduced)",
    )


def pytest_benchmark_update_machine_info(config, machine_info):
    """The environment, and on a GPU the peaks fastpix's table gives it (each row names the roof it is against)."""
    machine_info["fastpix"] = {**common.environment(), "configuration": common.configuration_name(config)}
    if torch.cuda.is_available():
        from fastpix.peaks import describe_device

        machine_info["fastpix"]["peak"] = describe_device()


@pytest.fixture(scope="session")
def configuration(request):
    return common.configuration_name(request.config)


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
