"""The Predictor's steady batch-1 call under OpenMP's default wait policy and under OMP_WAIT_POLICY=passive, each in
fresh processes, alternated (the policy is read once, when OpenMP starts, so it cannot change inside a process).

    OMP_NUM_THREADS=2 python bench/cpu_wait_policy.py --json out.json     # packages built: ~1 minute

unet_256 ngf 64 at 256², norm_mode running, compiled (its packages from --cache-dir, built first if missing). The
question it answers: how much a call slows down when another job takes a core, with threads that spin while they
wait for each other (the default) and with threads that sleep (passive). Run it on a quiet machine and beside a
busy one: the 1-minute load average is recorded with every process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CALL = r"""
import json, os, sys, time, torch
from fastpix.infer.predictor import Predictor
from fastpix.models import define_G
torch.manual_seed(0)
G = define_G(3, 3, 64, "unet_256", "batch", True, backend="eager")
p = Predictor(G, device="cpu", norm_mode="running", max_batch_size=1, cache_dir=sys.argv[1]).warmup((256, 256),
                                                                                                  wait=True)
x = [torch.rand(3, 256, 256) * 2 - 1]
with torch.inference_mode():
    for _ in range(3):
        p(x, output_type="pt")
    times = []
    for _ in range(int(sys.argv[2])):
        start = time.perf_counter()
        p(x, output_type="pt")
        times.append(time.perf_counter() - start)
print(json.dumps({"median_ms": 1000 * sorted(times)[len(times) // 2], "load_average": os.getloadavg()[0]}))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="cpu_wait_policy.json")
    parser.add_argument("--rounds", type=int, default=3, help="processes per policy, alternated (default: 3)")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per process (default: 20)")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "fastpix_cpu_compare_cache"))
    args = parser.parse_args(argv)
    results = {"threads": os.environ.get("OMP_NUM_THREADS"), "runs": {"default": [], "passive": []}}
    for _ in range(args.rounds):
        for policy in ("default", "passive"):
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            if policy == "passive":
                env["OMP_WAIT_POLICY"] = "passive"
            out = subprocess.run(
                [sys.executable, "-c", CALL, args.cache_dir, str(args.calls)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            run = json.loads(out.stdout.strip().splitlines()[-1])
            results["runs"][policy].append(run)
            print(f"{policy:<8} {run['median_ms']:8.1f} ms  (load average {run['load_average']:.2f})", flush=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
