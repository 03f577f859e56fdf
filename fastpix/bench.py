"""`fastpix bench`: run the benchmark suites of bench/ on this machine and print the comparison table.

The suites live in the source tree (bench/ beside the package); each records, per case, its group and whether
it is the group's baseline (the eager PyTorch twin), so the table shows every case's speed-up over that baseline.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def run(suites: list[str], json_path: str, select: str | None = None, cpu_config: str = "reduced") -> int:
    if not os.path.isdir(BENCH_DIR):
        raise FileNotFoundError(f"{BENCH_DIR} not found: `fastpix bench` runs from a source checkout "
                                "(pip install -e .)")
    files = [os.path.join(BENCH_DIR, f"bench_{s}.py") for s in suites]
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"{f}: no such benchmark suite")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files,
           f"--benchmark-json={json_path}", "--benchmark-disable-gc", "--benchmark-sort=name",
           f"--cpu-config={cpu_config}"]
    if select:
        cmd += ["-k", select]
    return subprocess.call(cmd, cwd=BENCH_DIR)


def table(json_path: str) -> str:
    """One line per case: group, case, median, img/s (where known), % of the device's roof for the case's
    precision (on a CPU a matmul timed in the same run), speed-up over the group's baseline."""
    with open(json_path) as f:
        results = json.load(f)["benchmarks"]
    baselines = {r["group"]: r["stats"]["median"] for r in results if r.get("extra_info", {}).get("baseline")}
    lines = [f"{'group':<28} {'case':<48} {'median ms':>10} {'img/s':>10} {'% roof':>7} {'speed-up':>9}"]
    for r in sorted(results, key=lambda r: (r["group"] or "", r["name"])):
        info = r.get("extra_info", {})
        median = r["stats"]["median"]
        base = baselines.get(r["group"])
        speedup = f"{base / median:.2f}x" if base else "-"
        img = f"{info['img_per_s']:.1f}" if info.get("img_per_s") else "-"
        fraction = info.get("fraction_of_peak", info.get("mfu"))
        roof = f"{100 * fraction:.1f}%" if fraction else "-"
        lines.append(f"{(r['group'] or '')[:28]:<28} {r['name'][:48]:<48} {1000 * median:>10.3f} {img:>10} "
                     f"{roof:>7} {speedup:>9}")
    return "\n".join(lines)
