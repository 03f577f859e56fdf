"""`fastpix info` (versions, devices, the image decoder) and `fastpix bench` (the benchmark suites)."""

from __future__ import annotations

import os

from fastpix import __version__
from fastpix.cli.flags import build_config, subcommand
from fastpix.config import BenchConfig


def cmd_info(args):
    import torch
    import triton

    from fastpix import runtime
    from fastpix.data.decode import backend as decode_backend

    print(f"fastpix {__version__}")
    print(
        f"torch {torch.__version__}, triton {triton.__version__}, cuda available: {torch.cuda.is_available()}"
        + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "")
    )
    if torch.cuda.is_available():
        from fastpix.peaks import describe_device

        print(describe_device())
    cpu_precision = runtime.resolve_precision(None, "cpu")
    print(
        f"cpu: {runtime.cpu_features()} (native bf16: {'yes' if runtime.cpu_has_native_bf16() else 'no'}); "
        f"on the cpu fastpix trains in {cpu_precision} and predicts in {cpu_precision} with runtime compiled "
        "(inductor, frozen weights, channels-last; eager for norm_mode batch or dropout)"
    )
    print(
        f"image decoder: {decode_backend()}"
        + (
            ""
            if decode_backend() == "native"
            else " (the C++ decoder was not built: libjpeg/libpng headers missing at install time)"
        )
    )


def cmd_bench(args):
    from fastpix import bench

    cfg = build_config(BenchConfig, vars(args))
    if cfg.layers:  # ConfigError without a CUDA device
        print(bench.layer_table())
        return 0
    json_path = os.path.abspath(cfg.json)  # the user's folder, whatever folder the suites run from
    code = bench.run(cfg.suite, json_path, cfg.select, cfg.cpu_config)
    if os.path.isfile(json_path):
        print(bench.table(json_path))
        print(f"fastpix bench: results in {json_path}")
    return code


def register(sub):
    subcommand(sub, "info", cmd_info, "versions, devices and the active image decoder")
    subcommand(
        sub, "bench", cmd_bench, "benchmark fastpix against eager PyTorch on this machine", (BenchConfig, "benchmarks")
    )
