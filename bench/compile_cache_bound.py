"""The compiled cache stays within --compile_cache_max_gb: five unet_256 checkpoints compiled one after another into
one cache folder bounded at 0.4 GB, each by its own Predictor, as five `fastpix predict` or `serve` runs would.

    OMP_NUM_THREADS=2 python bench/compile_cache_bound.py --json out.json       # five builds; ~2-10 minutes

Each checkpoint (random unet_256 weights, ngf 64, its own seed) gets the package of its 256² batch-1 input (about
110 MB in bf16), built in the compiler process; after each, the folder's size on disk (every file under it: packages,
descriptions, and anything Inductor would have left) and the packages it holds. Target: never over 0.4 GB.
Then, in a fresh process, the resident memory one loaded package adds (loaded and run once, as a Predictor does):
the per-package term of the server's memory bound (--max_loaded_packages).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastpix import runtime
from fastpix.bench_suites.common import cpu_machine
from fastpix.cache_folders import size_of
from fastpix.infer import compiled_cache
from fastpix.infer.predictor import Predictor
from fastpix.models import define_G

BOUND_GB = 0.4
CHECKPOINTS = 5


def run(cache: str) -> list[dict]:
    rows = []
    for seed in range(CHECKPOINTS):
        torch.manual_seed(seed)
        G = define_G(3, 3, 64, "unet_256", "batch", True, backend="eager")
        started = time.perf_counter()
        predictor = Predictor(
            G,
            device="cpu",
            norm_mode="instance",
            runtime="compiled",
            max_batch_size=1,
            cache_dir=cache,
            cache_max_gb=BOUND_GB,
        )
        predictor.warmup((256, 256), wait=True)
        built_s = time.perf_counter() - started
        loaded = predictor.compile_status()["compiled"]
        predictor.close()
        rows.append(
            {
                "checkpoint": seed,
                "build_s": built_s,
                "loaded": loaded,
                "folder_bytes": size_of(cache),
                "packages": [e.what for e in compiled_cache.entries(cache)],
            }
        )
        print(rows[-1], flush=True)
    return rows


RESIDENT = r"""
import json, sys, torch
from fastpix.infer.compiled_packages import load_package
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
x = torch.zeros(1, 3, 256, 256, dtype=torch.bfloat16 if "bf16" in sys.argv[2] else torch.float32)
x = x.contiguous(memory_format=torch.channels_last)
before = rss()
package = load_package(sys.argv[1])
loaded = rss()
package(x)
print(json.dumps({"loaded_bytes": loaded - before, "after_first_call_bytes": rss() - before}))
"""


def resident(cache: str, precision: str) -> dict:
    path = compiled_cache.entries(cache)[-1].lock
    out = subprocess.run([sys.executable, "-c", RESIDENT, path, precision], capture_output=True, text=True, check=True)
    return {"package": path, **json.loads(out.stdout.strip().splitlines()[-1])}


def table(rows: list[dict]) -> str:
    lines = [
        f"| checkpoint | built in | cache folder after | packages in it | within {BOUND_GB} GB |",
        "|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['checkpoint'] + 1} | {row['build_s']:.0f} s | {row['folder_bytes'] / 1e9:.3f} GB | "
            f"{len(row['packages'])} | {'yes' if row['folder_bytes'] <= BOUND_GB * 1e9 else 'NO'} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="compile_cache_bound.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        rows = run(os.path.join(workdir, "compiled"))
        memory = resident(os.path.join(workdir, "compiled"), runtime.resolve_precision(None, "cpu"))
    result = {
        "bound_gb": BOUND_GB,
        "rows": rows,
        "max_folder_bytes": max(r["folder_bytes"] for r in rows),
        "resident_per_package": memory,
        "machine": cpu_machine(),
    }
    print(table(rows))
    print(
        f"one loaded package: +{memory['loaded_bytes'] / 2**20:.0f} MiB resident when loaded, "
        f"+{memory['after_first_call_bytes'] / 2**20:.0f} MiB after its first call (256², batch 1)"
    )
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
