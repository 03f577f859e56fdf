"""`fastpix bench`: which suites, and where their results go."""

from __future__ import annotations

from dataclasses import dataclass

from fastpix.config.fields import BENCH_SUITES, opt


@dataclass
class BenchConfig:
    suite: tuple = opt(("train",), "which benchmark suites to run", choices=BENCH_SUITES, nargs="+")
    json: str = opt("fastpix-bench.json", "where to write the results (relative to the current folder)")
    select: str = opt(None, "only cases whose name matches this pytest -k expression (default: all)")
    cpu_config: str = opt(
        "reduced",
        "on a CPU: reduced (small models), real (unet_256 ngf 64 at 256², few "
        "rounds) or dry (tiny shapes, no compiler builds: a smoke run)",
        choices=("reduced", "real", "dry"),
    )
    layers: bool = opt(
        False,
        "instead: per pix2pix conv layer (batch 1/16/64, bf16), the fused Triton block vs "
        "cuDNN and which one backend triton uses (measured once, cached)",
    )
