"""What a background build costs the requests being served meanwhile, in a thread or in a child process; and
whether one package with dynamic height and width could replace the per-size packages.

    OMP_NUM_THREADS=2 python bench/compile_in_background.py --json out.json      # unet_256; ~5-15 minutes

1. Serving while building. The Predictor (unet_256 ngf 64, norm_mode instance, the CPU default precision) serves
   256² at batch 1 from its package; its calls are timed back to back (a saturated server: the hardest case for a
   build that wants CPU too) while, in turn: nothing builds; a package for another size builds in a thread of
   this process (as a build inside the serving process would); builds in the compiler process (child) at
   SCHED_IDLE (what fastpix starts with), nice 19 (what it did before), nice 10 (what a starved build goes on at:
   compiled_builds.BUSY_PRIORITY) and nice 0. Per condition: the calls' p50 /
   p90 / max, how long the build took, and the compiler process's own CPU seconds. A build not done in CAP_S is
   stopped there (a saturated server leaves a child at the lowest priority next to nothing: that is the point).
2. Dynamic shapes. One package exported with dynamic height and width (multiples of 256, batch 1) against the
   per-size static packages and against eager, at 256×256, 512×256 and 256×512 (median of CALLS calls each).
Prints both tables and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastpix.bench_suites.common import cpu_machine
from fastpix.infer.compiled_builds import CompilerProcess, process_cpu_s
from fastpix.infer.compiled_cache import build_folder
from fastpix.infer.compiled_packages import build_package, inductor_build, load_package
from fastpix.infer.predictor import Predictor
from fastpix.models import define_G

ROUNDS = 1
CALLS = 15
CAP_S = 150.0
SHAPES = {
    "thread": (1, 3, 512, 256),
    "child SCHED_IDLE": (1, 3, 256, 512),
    "child nice 19": (1, 3, 512, 512),
    "child nice 10": (1, 3, 768, 256),
    "child nice 0": (1, 3, 256, 768),
}
PRIORITIES = {"child SCHED_IDLE": "idle", "child nice 19": "19", "child nice 10": "10", "child nice 0": "0"}


def quantiles(times: list[float]) -> dict:
    s = sorted(times)
    return {
        "n": len(s),
        "p50_ms": 1000 * statistics.median(s),
        "p90_ms": 1000 * s[int(0.9 * (len(s) - 1))],
        "max_ms": 1000 * s[-1],
    }


def serve_while(predictor, x, build) -> dict:
    """Time predictor(x) back to back while build() runs in a thread (at least CALLS calls)."""
    done, elapsed = threading.Event(), {}

    def target():
        start = time.perf_counter()
        elapsed["child"] = build()
        elapsed["build_s"] = time.perf_counter() - start
        done.set()

    times = []
    threading.Thread(target=target, daemon=True).start()
    while not done.is_set() or len(times) < CALLS:
        start = time.perf_counter()
        predictor(x, output_type="pt")
        times.append(time.perf_counter() - start)
    return {**quantiles(times), **elapsed}


def conditions(predictor, workdir: str, round_: int):
    net, dtype = predictor.runner.net, predictor.runner.dtype

    def example(shape):
        return torch.zeros(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)

    def path(name):
        return os.path.join(workdir, f"r{round_}-{name.replace(' ', '_')}.pt2")

    def in_thread():
        build_package(net, example(SHAPES["thread"]), path("thread"), workdir)

    def in_child(name):
        def build():
            child = CompilerProcess(net, PRIORITIES[name])
            answer: list = []
            asked = threading.Thread(
                target=lambda: answer.append(child.build(SHAPES[name], dtype, path(name), None, workdir)), daemon=True
            )
            asked.start()
            asked.join(CAP_S)
            cpu = process_cpu_s(child.proc.pid)
            child.stop(at_once=asked.is_alive())
            asked.join()
            assert answer[0] is None or not os.path.exists(path(name)), answer
            return {"finished": os.path.exists(path(name)), "cpu_s": cpu}

        return build

    return {"nothing builds": lambda: None, "thread": in_thread, **{name: in_child(name) for name in PRIORITIES}}


def dynamic_package(net, dtype, path: str, workdir: str):
    h, w = torch.export.Dim("h", min=1, max=16), torch.export.Dim("w", min=1, max=16)
    x = torch.zeros(1, 3, 512, 512, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        exported = torch.export.export(net, (x,), dynamic_shapes={"x": {2: 256 * h, 3: 256 * w}})
    with build_folder(workdir) as folder, inductor_build(folder), torch.no_grad():
        torch._inductor.aoti_compile_and_package(exported, package_path=path)
    return load_package(path)


def median_ms(fn, x) -> float:
    fn(x)
    times = []
    for _ in range(CALLS):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def run(workdir: str) -> dict:
    torch.manual_seed(0)
    G = define_G(3, 3, 64, "unet_256", "batch", True, backend="eager")
    predictor = Predictor(
        G,
        device="cpu",
        norm_mode="instance",
        runtime="compiled",
        max_batch_size=1,
        cache_dir=os.path.join(workdir, "cache"),
    )
    predictor.warmup((256, 256), wait=True)
    x = torch.rand(3, 256, 256) * 2 - 1
    result = {"runtime": predictor.description, "serving": {}, "dynamic": {}}
    with torch.inference_mode():
        for round_ in range(ROUNDS):
            for name, build in conditions(predictor, workdir, round_).items():
                result["serving"].setdefault(name, []).append(serve_while(predictor, x, build))
                print(name, result["serving"][name][-1], flush=True)
        net, dtype = predictor.runner.net, predictor.runner.dtype
        started = time.perf_counter()
        dynamic = dynamic_package(net, dtype, os.path.join(workdir, "dynamic.pt2"), workdir)
        result["dynamic_build_s"] = time.perf_counter() - started
        static = {(256, 256): predictor.runner.loaded[(1, 3, 256, 256)].package}
        for name in ("thread", "child nice 0"):
            shape = SHAPES[name]
            static[shape[2:]] = load_package(os.path.join(workdir, f"r0-{name.replace(' ', '_')}.pt2"))
        for (h, w), package in static.items():
            xs = torch.rand(1, 3, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last)
            result["dynamic"][f"{h}x{w}"] = {
                "static_ms": median_ms(package, xs),
                "dynamic_ms": median_ms(dynamic, xs),
                "eager_ms": median_ms(net, xs),
            }
            print(h, w, result["dynamic"][f"{h}x{w}"], flush=True)
    predictor.close()
    return result


def tables(result: dict) -> str:
    lines = [
        "Serving 256² batch 1 (calls back to back) while a package for another size builds:",
        "| while | calls | p50 | p90 | max | the build took |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, rounds in result["serving"].items():
        for r in rounds:
            child = r.get("child") or {}
            took = f"{r.get('build_s', 0):.0f} s" if child.get("finished", True) else f"not done in {CAP_S:.0f} s"
            cpu = f" ({child['cpu_s']:.1f} s of CPU)" if child else ""
            lines.append(
                f"| {name} | {r['n']} | {r['p50_ms']:.0f} ms | {r['p90_ms']:.0f} ms | {r['max_ms']:.0f} ms | "
                f"{took}{cpu} |"
            )
    lines += [
        "",
        f"One package with dynamic height and width (built in {result['dynamic_build_s']:.0f} s) against "
        "the static package of each size and eager:",
        "| padded size | static package | dynamic package | eager (same dtype, channels-last) |",
        "|---|---:|---:|---:|",
    ]
    for size, r in result["dynamic"].items():
        lines.append(
            f"| {size} | {r['static_ms']:.1f} ms | {r['dynamic_ms']:.1f} ms "
            f"({r['dynamic_ms'] / r['static_ms']:.2f}×) | {r['eager_ms']:.1f} ms |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="compile_in_background.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        result = run(workdir)
    result["machine"] = cpu_machine()
    print(tables(result))
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
