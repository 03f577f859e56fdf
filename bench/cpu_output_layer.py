"""The compiled CPU network with its output layer as a transposed conv (form 1) and in sub-pixel form (form 2,
fastpix/infer/subpixel.py), side by side: whole packages and the layer alone, interleaved round by round.

    OMP_NUM_THREADS=2 python bench/cpu_output_layer.py --json out.json      # ~2 minutes of builds, then timing

unet_256 ngf 64 at 256², norm_mode running, bf16 channels-last, batch pieces 1 and 2 (what the Predictor runs on two
threads). Each package is built here (AOTInductor with freezing, compiled_packages.build_package) into a temporary
folder; the layer alone (128 → 3 channels at 128² in) is run eagerly with its weights pre-cast, as the network holds
it. Prints a table and writes JSON; with --profile also where the sub-pixel package's time goes (oneDNN's verbose
timing of each conv, the rest being Inductor's own kernels).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastpix.infer.compiled import prepared_network
from fastpix.infer.compiled_packages import build_package, load_package
from fastpix.infer.norm_modes import inference_network
from fastpix.infer.subpixel import SubPixelConvTranspose2d
from fastpix.models import define_G


def forms(precision: str):
    """{form: network}: the prepared network (sub-pixel output) and the same with the transposed conv put back."""
    torch.manual_seed(0)
    net = inference_network(define_G(3, 3, 64, "unet_256", "batch", True, backend="eager"), "running")
    subpixel, dtype = prepared_network(net, precision)
    transposed, _ = prepared_network(net, precision)
    transposed.model.model[3] = net.model.model[3].to(dtype).to(memory_format=torch.channels_last)
    assert isinstance(subpixel.model.model[3], SubPixelConvTranspose2d)
    return {"transposed": transposed, "subpixel": subpixel}, dtype


def interleaved(cases: dict, rounds: int, calls: int) -> dict:
    """{case: [median seconds of `calls` calls, per round]}."""
    times = {name: [] for name in cases}
    with torch.inference_mode():
        for fn in cases.values():
            fn()
        for _ in range(rounds):
            for name, fn in cases.items():
                one = []
                for _ in range(calls):
                    start = time.perf_counter()
                    fn()
                    one.append(time.perf_counter() - start)
                times[name].append(float(np.median(one)))
    return times


def onednn_profile(package, x, calls: int = 10) -> dict:
    """oneDNN's own timing of every primitive the package runs (its verbose mode, read from the C-level stdout),
    summed per primitive kind and shape over `calls` calls, in ms per call; the rest of a call (Inductor's own
    kernels: the elementwise passes, instance-norm statistics, copies) is its wall time less their sum."""
    import re

    with torch.inference_mode():
        for _ in range(3):
            package(x)
        sys.stdout.flush()
        saved, log = os.dup(1), tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - fd 1 is pointed at it below
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                start = time.perf_counter()
                for _ in range(calls):
                    package(x)
                wall = (time.perf_counter() - start) / calls
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
    log.seek(0)
    per = {}
    for line in log:
        fields = line.strip().split(",")
        if len(fields) > 5 and fields[2] == "primitive" and fields[3] == "exec":
            shape = next((f for f in fields if re.match(r"(mb|g)\d", f)), fields[-2])
            name = f"{fields[5]} {shape}"
            per[name] = per.get(name, 0.0) + float(fields[-1]) / calls
    onednn = sum(per.values())
    return {
        "wall_ms": 1000 * wall,
        "onednn_ms": onednn,
        "other_ms": 1000 * wall - onednn,
        "primitives_ms": dict(sorted(per.items(), key=lambda kv: -kv[1])),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="cpu_output_layer.json")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--profile", action="store_true", help="print the sub-pixel package's top ops")
    args = parser.parse_args(argv)
    nets, dtype = forms(args.precision)
    results = {
        "load_average": os.getloadavg(),
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "torch": torch.__version__,
        "rows": {},
    }
    folder = tempfile.mkdtemp(prefix="fastpix_output_layer_")
    cases = {}
    for batch in (1, 2):
        x = torch.rand(batch, 3, 256, 256).to(dtype).contiguous(memory_format=torch.channels_last)
        for form, net in nets.items():
            path = os.path.join(folder, f"{form}_{batch}.pt2")
            started = time.perf_counter()
            build_package(net, x, path)
            package = load_package(path)
            print(f"built {form} batch {batch} in {time.perf_counter() - started:.0f} s", flush=True)
            cases[f"network batch {batch} {form}"] = lambda p=package, x=x: p(x)
        h = torch.rand(batch, 128, 128, 128).to(dtype).contiguous(memory_format=torch.channels_last)
        for form, net in nets.items():
            cases[f"layer batch {batch} {form}"] = lambda m=net.model.model[3], h=h: m(h)
        if args.profile:
            results[f"profile_subpixel_batch{batch}"] = prof = onednn_profile(package, x)
            print(
                f"batch {batch}: {prof['wall_ms']:.1f} ms a call (with oneDNN's logging on), oneDNN "
                f"{prof['onednn_ms']:.1f} ms, the rest {prof['other_ms']:.1f} ms; the costliest primitives:"
            )
            for name, ms in list(prof["primitives_ms"].items())[:12]:
                print(f"  {ms:7.2f} ms  {name}")
    times = interleaved(cases, args.rounds, calls=5)
    for name, seconds in times.items():
        base = times[name.replace("subpixel", "transposed")]
        ratios = [b / s for b, s in zip(base, seconds)]
        results["rows"][name] = {
            "ms": 1000 * float(np.median(seconds)),
            "rounds_ms": [1000 * s for s in seconds],
            "speedup_median": float(np.median(ratios)),
        }
    results["load_average_end"] = os.getloadavg()
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"load average {results['load_average']} .. {results['load_average_end']}, {results['threads']} threads")
    for name, row in results["rows"].items():
        print(f"{name:<32} {row['ms']:>8.2f} ms  {row['speedup_median']:.2f}x vs transposed")


if __name__ == "__main__":
    main()
