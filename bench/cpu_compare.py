"""The CPU comparison at the real model size, in one process: fastpix against eager PyTorch, interleaved.

    OMP_NUM_THREADS=2 python bench/cpu_compare.py --json bench/results/cpu_real.json      # about 5 minutes
    (with the peers: pip install 'fastpix[bench,onnx]'; --skip-peers leaves them out, --rounds 3 shortens it)

unet_256 ngf 64 (+ basic PatchGAN ndf 64 for training) at 256², the reference's pix2pix configuration.
- roofline: the faster of a 2048³ matmul and a GEMM-shaped 1×1 conv, in fp32 and in bf16, timed here, so that
  every row's "% roof" is against this CPU now.
- inference, batch 1 and 8: (a) eager fp32 NCHW eval mode (the baseline for running), (a_i) eager fp32 NCHW run
  image by image in train-mode norm (the baseline for instance: the paper's protocol), (d) the Predictor's
  default for norm_mode running, (e) for norm_mode instance; the Predictor is timed as a caller sees it (a list of
  tensors in, output tensors out). Its compiled artifacts come from (or go to) the on-disk cache.
- training, batch 1 and 4: (a) the reference step (eager fp32 NCHW, per-parameter Adam), (f) fastpix's default
  step on this CPU (TrainEngine + Pix2PixStep as `fastpix train` builds them), then (g) `fastpix train` itself,
  end to end on demo data at 256² (data pipeline, logging, print_freq 1), with (a) run once after each of its
  iterations inside the loop, so that each loop iteration has its own reference beside it (per-round ratios);
  the loop's overhead is each logged window (metrics.jsonl) less the engine call timed inside it (and less the
  reference), over the same iterations, all inside one epoch; the checkpoint save that ends an epoch (every
  epoch, for exact resume) is timed apart. Every engine (a, f, g) first runs WARMUP_ITERS untimed iterations:
  a fresh engine's first iterations are 2-15x slower (measured), and counting them in one case but not another
  is what once showed a 33% "loop overhead" at batch 1. The one-off costs outside the iterations (data cache
  build, model set-up, the final checkpoint save) and the warm-up iterations are reported separately.
- peers (bench/cpu_peers.py), in the same rounds: inference by ONNX Runtime fp32 and OpenVINO f32 and bf16 on the
  ONNX file of the norm_mode running network (against (a), beside (d)); training by torch.compile of G and D in
  fp32 NCHW and bf16 channels-last (against the reference step). A peer not installed is left out, said in one line.
  Every inference row and the training rows give their accuracy: the relative L2 distance of their output from
  eager fp32's (for training, G's output in the first iteration, from the same weights and batch).
- first call: a fresh process loads the Predictor (artifact cached) and times its first and a steady call.
Cases of a group run in turn, round after round, so that load from other jobs hits them alike: the ratios are
medians of per-round ratios, and the JSON keeps every round's time (spread).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cpu_peers

from fastpix import runtime
from fastpix.bench_suites.common import cpu_machine
from fastpix.infer.norm_modes import inference_network
from fastpix.infer.predictor import Predictor
from fastpix.models import define_D, define_G
from fastpix.peaks import cpu_roof_flops
from fastpix.train.engine import TrainEngine
from fastpix.train.flops import conv_flops, train_flops_per_image
from fastpix.train.step import Pix2PixStep

SIZE, NGF = 256, 64
WARMUP_ITERS = 4  # untimed iterations of every training engine (the first ones create oneDNN primitives, grow memory)


def timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def roofline() -> dict:
    """This CPU's reachable FLOP/s in fp32 and bf16, measured now (fastpix.peaks.cpu_roof_flops)."""
    return {"fp32": cpu_roof_flops(torch.float32), "bf16": cpu_roof_flops(torch.bfloat16)}


def interleaved(cases: dict, rounds: int) -> dict:
    """{case: [seconds per round]}: each round runs every case once, in turn."""
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            times[name].append(timed(fn))
    return times


def generator():
    torch.manual_seed(0)
    return define_G(3, 3, NGF, "unet_256", "batch", True, backend="eager")


def relative_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).norm() / want.norm())


def inference_cases(batch: int, cache_dir: str, peers: bool) -> tuple[dict, dict]:
    G = generator()
    x = torch.rand(batch, 3, SIZE, SIZE) * 2 - 1
    images = list(x)
    plain = generator().eval()
    train_norm = inference_network(G, "batch")  # train-mode BatchNorm, no running-stat updates, dropout off
    # wait: their packages built (or loaded) before any round is timed; until then a size runs eagerly.
    running = Predictor(G, device="cpu", norm_mode="running", max_batch_size=batch, cache_dir=cache_dir).warmup(
        (SIZE, SIZE), wait=True
    )
    instance = Predictor(G, device="cpu", norm_mode="instance", max_batch_size=batch, cache_dir=cache_dir).warmup(
        (SIZE, SIZE), wait=True
    )
    cases = {
        "a_eager_fp32_nchw_eval": lambda: plain(x),
        "a_i_eager_fp32_nchw_per_image_train_norm": lambda: [train_norm(img[None]) for img in x],
        "d_predictor_running": lambda: running(images, output_type="pt"),
        "e_predictor_instance": lambda: instance(images, output_type="pt"),
    }
    info = {
        "d_predictor_running": running.description,
        "e_predictor_instance": instance.description,
        "precisions": {"d_predictor_running": running.precision, "e_predictor_instance": instance.precision},
        "rel_l2": {},
        "skipped": [],
    }
    peer_fns = {}
    if peers:  # the norm_mode running network (BatchNorm folded), as `fastpix export --format onnx` writes it
        peer_fns, peer_precisions, info["skipped"] = cpu_peers.inference_peers(
            inference_network(G, "running"), tuple(x.shape), cache_dir, 2**8
        )
        info["precisions"].update(peer_precisions)
        array = cpu_peers.as_array(x)
        for name, fn in peer_fns.items():
            cases[name] = lambda fn=fn: torch.from_numpy(fn(array))
    with torch.inference_mode():
        # Accuracy against the eager twins, on these inputs.
        ref_run = torch.stack(
            Predictor(G, device="cpu", precision="fp32", norm_mode="running", runtime="eager")(images, output_type="pt")
        )
        ref_inst = torch.stack([train_norm(img[None])[0] for img in x])
        for name, p, ref in (("d_predictor_running", running, ref_run), ("e_predictor_instance", instance, ref_inst)):
            got = torch.stack(p(images, output_type="pt"))
            grey = lambda t: ((t.clamp(-1, 1) + 1) * 127.5).round()  # noqa: E731
            info[name + "_rel_error"] = info["rel_l2"][name] = relative_l2(got, ref)
            info[name + "_mean_grey_levels"] = float((grey(got) - grey(ref)).abs().mean())
        info["rel_l2"]["a_eager_fp32_nchw_eval"] = relative_l2(plain(x), ref_run)
        for name in peer_fns:
            info["rel_l2"][name] = relative_l2(cases[name](), ref_run)
        for fn in cases.values():  # warm-up
            fn()
    return cases, info


def train_pair(batch: int, compile_peers: bool = False):
    """({case: callable on fixed batches}, {case: precision}, {case: relative L2 of G's output in the first iteration
    against the reference's}): the reference step, fastpix's default step, and with compile_peers the torch.compile
    peers (bench/cpu_peers.py). Every engine starts from the same weights (seed 0) on the same batch. Dropout fills
    its masks in memory order, so a row whose dropout layers see channels-last tensors drops other elements than the
    NCHW reference and its figure is no accuracy (docs/benchmarks.md, "CPU at real size: unet_256")."""
    variants = {"a_reference_fp32_nchw": "fp32", "f_fastpix_default": None}
    if compile_peers:
        variants.update(cpu_peers.COMPILED_TRAIN)
    made, first = {}, {}
    for name, precision in variants.items():
        torch.manual_seed(0)
        G = define_G(3, 3, NGF, "unet_256", "batch", True, backend="eager").train()
        D = define_D(6, NGF, "basic", backend="eager").train()
        precision = runtime.resolve_precision(precision, "cpu")
        fmt = torch.channels_last if runtime.channels_last("cpu", precision) else torch.preserve_format
        G.to(memory_format=fmt)
        D.to(memory_format=fmt)
        if name.startswith("h_"):
            G, D = cpu_peers.compiled_networks(G, D)
        # The reference: plain Adam (for-loop), fp32, NCHW; the step picks fused Adam for the other precisions.
        engine = TrainEngine(Pix2PixStep(G, D, precision=precision, device_type="cpu"), torch.device("cpu"))
        A, B = torch.rand(batch, 3, SIZE, SIZE) * 2 - 1, torch.rand(batch, 3, SIZE, SIZE) * 2 - 1
        for i in range(WARMUP_ITERS):
            engine(A, B)
            if i == 0:
                first[name] = engine.fake_B.float().clone()
        made[name] = (lambda e=engine, a=A, b=B: (e(a, b), e.read_losses())), precision
    rel = {name: relative_l2(fake, first["a_reference_fp32_nchw"]) for name, fake in first.items()}
    return {k: v[0] for k, v in made.items()}, {k: v[1] for k, v in made.items()}, rel


def train_end_to_end(batch: int, iters: int, workdir: str, reference) -> dict:
    """`fastpix train` defaults at 256² on demo data, WARMUP_ITERS + iters iterations, print_freq 1. After each
    engine call the reference step runs once (timed), so each iteration has its reference under the same load.
    Per steady iteration: loop seconds (the metrics.jsonl window less the reference), the engine call's seconds,
    the reference's seconds; plus the warm-up iterations and the time outside the windows (set-up, cache, save)."""
    from unittest import mock

    from fastpix.config import DataConfig, ModelConfig, TrainConfig
    from fastpix.data.demo import write_demo_dataset
    from fastpix.train import loop

    data = os.path.join(workdir, f"data_bs{batch}")  # one epoch holds every timed iteration: no epoch-end save
    if not os.path.isdir(data):
        write_demo_dataset(data, SIZE, {"train": max(32, batch * (WARMUP_ITERS + iters))})
    steps, refs, saves = [], [], []
    real_save = loop.save

    def timed_save(*args, **kwargs):
        saves.append(timed(real_save, *args, **kwargs))

    class TimedEngine(TrainEngine):
        def __call__(self, real_A, real_B):
            steps.append(timed(super().__call__, real_A, real_B))
            refs.append(timed(reference))

    cfg = TrainConfig(
        name=f"bs{batch}",
        checkpoints_dir=os.path.join(workdir, "runs"),
        batch_size=batch,
        max_iters=WARMUP_ITERS + iters,
        print_freq=1,
        display_freq=10**9,
        save_latest_freq=10**9,
        save_epoch_freq=10**9,
    )
    started = time.perf_counter()
    with mock.patch.object(loop, "TrainEngine", TimedEngine), mock.patch.object(loop, "save", timed_save):
        loop.train(ModelConfig(), DataConfig(dataroot=data), cfg, overwrite=True, progress=False)
    wall = time.perf_counter() - started
    with open(os.path.join(workdir, "runs", f"bs{batch}", "metrics.jsonl")) as f:
        windows = [r["ms_per_iter"] / 1000 for r in map(json.loads, f)]  # print_freq 1: one window per iteration
    assert len(windows) == len(steps) == WARMUP_ITERS + iters, (len(windows), len(steps))
    loop_s = [w - r for w, r in zip(windows, refs)]
    return {
        "seconds": loop_s[WARMUP_ITERS:],
        "step_seconds": steps[WARMUP_ITERS:],
        "reference_seconds": refs[WARMUP_ITERS:],
        "warmup_seconds": loop_s[:WARMUP_ITERS],
        "outside_iterations_s": wall - sum(windows),
        "checkpoint_save_s": saves,
        "precision": runtime.resolve_precision(None, "cpu"),
    }


FIRST_CALL = r"""
import json, sys, time, torch
from fastpix.infer.predictor import Predictor
from fastpix.models import define_G
torch.manual_seed(0)
G = define_G(3, 3, 64, "unet_256", "batch", True, backend="eager")
t0 = time.perf_counter()
p = Predictor(G, device="cpu", norm_mode="instance", max_batch_size=1, cache_dir=sys.argv[1])
t1 = time.perf_counter()
x = torch.rand(3, 256, 256) * 2 - 1
with torch.inference_mode():
    p(x, output_type="pt"); t2 = time.perf_counter()
    steady = []
    for _ in range(5):
        s = time.perf_counter(); p(x, output_type="pt"); steady.append(time.perf_counter() - s)
print(json.dumps({"load_s": t1 - t0, "first_call_s": t2 - t1, "steady_call_s": sorted(steady)[2],
                  "runtime": p.description}))
"""


def first_call(cache_dir: str) -> dict:
    out = subprocess.run([sys.executable, "-c", FIRST_CALL, cache_dir], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(times: dict, baseline: str, batch: int, flops_per_image: float, peak: float) -> dict:
    rows = {}
    for name, seconds in times.items():
        ratios = [b / s for b, s in zip(times[baseline], seconds)]
        median = float(np.median(seconds))
        rows[name] = {
            "ms": 1000 * median,
            "img_per_s": batch / median,
            "roof_pct": 100 * flops_per_image * batch / median / peak,
            "speedup_median": float(np.median(ratios)),
            "speedup_range": [min(ratios), max(ratios)],
            "rounds_ms": [1000 * s for s in seconds],
        }
    return rows


def infer_rows(times: dict, batch: int, f_g: float, roof: dict, info: dict) -> dict:
    """Running mode and the peers against eager eval; instance mode against eager image by image in train-mode
    norm. Each row's % of the roof is against its own precision's roof."""
    instance_base = "a_i_eager_fp32_nchw_per_image_train_norm"
    rows = summarise(
        {k: v for k, v in times.items() if k != "e_predictor_instance"},
        "a_eager_fp32_nchw_eval",
        batch,
        f_g,
        roof["fp32"],
    )
    rows["e_predictor_instance"] = summarise(
        {k: times[k] for k in (instance_base, "e_predictor_instance")}, instance_base, batch, f_g, roof["fp32"]
    )["e_predictor_instance"]
    return with_precision(rows, roof, info["precisions"], info["rel_l2"])


def with_precision(rows: dict, roof: dict, precisions: dict, rel_l2: dict) -> dict:
    """rows (computed against the fp32 roof) with each row's precision, its % of that precision's roof, and its
    accuracy where measured."""
    for name, row in rows.items():
        row["precision"] = precisions.get(name, "fp32")
        row["roof_pct"] *= roof["fp32"] / roof[row["precision"]]
        if name in rel_l2:
            row["rel_l2"] = rel_l2[name]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="cpu_real.json", help="where to write the results")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per group (default: 5)")
    parser.add_argument("--cache-dir", default=None, help="compiled-artifact cache (default: fastpix's)")
    parser.add_argument("--skip-train-loop", action="store_true", help="leave out the end-to-end `fastpix train`")
    parser.add_argument("--skip-peers", action="store_true", help="leave out ONNX Runtime, OpenVINO, torch.compile")
    parser.add_argument(
        "--compile-train-batches",
        default="1",
        help="training batches with torch.compile rows, comma-separated, of 1 and 4 (default: 1; "
        "each compiles G and D twice, minutes on a few cores)",
    )
    args = parser.parse_args(argv)
    cache_dir = args.cache_dir or os.path.join(tempfile.gettempdir(), "fastpix_cpu_compare_cache")
    started = time.perf_counter()
    roof = roofline()
    results = {
        "machine": {**cpu_machine(), "roofline_flops": roof},
        "infer": {},
        "train": {},
    }
    f_g = conv_flops(generator(), (1, 3, SIZE, SIZE))
    compile_batches = {int(b) for b in args.compile_train_batches.split(",") if b.strip()}
    for batch in (1, 8):
        cases, info = inference_cases(batch, cache_dir, not args.skip_peers)
        for line in info["skipped"] if batch == 1 else ():
            print(line, flush=True)
        with torch.inference_mode():
            times = interleaved(cases, args.rounds)
        results["infer"][f"batch {batch}"] = {"rows": infer_rows(times, batch, f_g, roof, info), "info": info}
        print(f"infer batch {batch}: {time.perf_counter() - started:.0f} s", flush=True)
    results["first_call"] = first_call(cache_dir)
    G, D = generator(), define_D(6, NGF, "basic", backend="eager")
    f_train = train_flops_per_image(G, D, 3, 3, SIZE)
    workdir = tempfile.mkdtemp(prefix="fastpix_cpu_compare_")
    for batch in (1, 4):
        cases, precisions, rel_l2 = train_pair(batch, not args.skip_peers and batch in compile_batches)
        times = interleaved(cases, args.rounds)
        rows = with_precision(
            summarise(times, "a_reference_fp32_nchw", batch, f_train, roof["fp32"]), roof, precisions, rel_l2
        )
        entry = {"rows": rows, "precisions": precisions}
        if not args.skip_train_loop:
            loop = train_end_to_end(batch, args.rounds, workdir, cases["a_reference_fp32_nchw"])
            entry["rows"]["g_fastpix_train_end_to_end"] = end_to_end_row(loop, batch, f_train, roof)
        del cases
        results["train"][f"batch {batch}"] = entry
        print(f"train batch {batch}: {time.perf_counter() - started:.0f} s", flush=True)
    results["machine"]["load_average_end"] = os.getloadavg()
    results["wall_s"] = time.perf_counter() - started
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(table(results))
    print(f"written {args.json} in {results['wall_s']:.0f} s")


def end_to_end_row(loop: dict, batch: int, f_train: float, roof: dict) -> dict:
    """The `fastpix train` row: its median round, its speed-up over the reference step timed in the same rounds."""
    median = float(np.median(loop["seconds"]))
    ratios = [r / s for r, s in zip(loop["reference_seconds"], loop["seconds"])]
    return {
        "ms": 1000 * median,
        "img_per_s": batch / median,
        "precision": loop["precision"],
        "speedup_median": float(np.median(ratios)),
        "speedup_range": [min(ratios), max(ratios)],
        "roof_pct": 100 * f_train * batch / median / roof[loop["precision"]],
        "loop_overhead_pct": 100 * (sum(loop["seconds"]) / sum(loop["step_seconds"]) - 1),
        "rounds_ms": [1000 * s for s in loop["seconds"]],
        "step_in_loop_ms": [1000 * s for s in loop["step_seconds"]],
        "reference_in_loop_ms": [1000 * s for s in loop["reference_seconds"]],
        "warmup_iterations_ms": [1000 * s for s in loop["warmup_seconds"]],
        "outside_iterations_s": loop["outside_iterations_s"],
        "checkpoint_save_s": loop["checkpoint_save_s"],
    }


def table(results: dict) -> str:
    roof = results["machine"]["roofline_flops"]
    lines = [
        f"CPU {results['machine']['cpu']} ({results['machine']['cpu_features']}, "
        f"{results['machine']['threads']} threads), roofline fp32 {roof['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {roof['bf16'] / 1e9:.0f} GFLOP/s",
        f"{'group':<14} {'case':<44} {'prec':>5} {'ms':>9} {'img/s':>8} {'% roof':>7} "
        f"{'speed-up (range)':>20} {'rel L2':>8}",
    ]
    for kind in ("infer", "train"):
        for group, entry in results[kind].items():
            for name, row in entry["rows"].items():
                spread = row.get("speedup_range")
                speed = f"{row['speedup_median']:.2f}x" + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else "")
                rel = f"{row['rel_l2']:.2e}" if "rel_l2" in row else "-"
                lines.append(
                    f"{kind + ' ' + group:<14} {name[:44]:<44} {row.get('precision', ''):>5} "
                    f"{row['ms']:>9.1f} {row['img_per_s']:>8.2f} {row['roof_pct']:>6.1f}% {speed:>20} {rel:>8}"
                    + (
                        f"  loop overhead {row['loop_overhead_pct']:.1f}%, warm-up iterations "
                        f"{', '.join(f'{ms:.0f}' for ms in row['warmup_iterations_ms'])} ms, outside the "
                        f"iterations {row['outside_iterations_s']:.1f} s (a checkpoint save "
                        f"{row['checkpoint_save_s'][0]:.1f} s)"
                        if "loop_overhead_pct" in row
                        else ""
                    )
                )
    fc = results.get("first_call")
    if fc:
        lines.append(
            f"first call (artifact cached): load {fc['load_s']:.2f} s, first {1000 * fc['first_call_s']:.0f} "
            f"ms, steady {1000 * fc['steady_call_s']:.0f} ms ({fc['first_call_s'] / fc['steady_call_s']:.1f}x)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
