"""Checkpoint saves against training: what a save costs the training thread, and `fastpix train` with a save every
epoch, with the background writer and with the synchronous save it replaced.

    OMP_NUM_THREADS=2 python bench/checkpoint_stall.py --json checkpoint_stall.json      # about 3 minutes

unet_256 ngf 64 + basic PatchGAN ndf 64 at 256², batch 1, at fastpix's default precision on this CPU.
- stall: after two training steps (the optimizers' state exists), the synchronous save of main before the
  background writer (the set's bytes made on the training thread — safetensors, torch.save — then written, hashed
  and fsynced: all of it on the training thread) against the background save's snapshot (store/snapshot.py: the
  only part left on the training thread), the first one (which allocates the kept buffers) apart; and the writer's
  own time (submit to written). The bytes a snapshot moves give the H100 estimate: pinned host copies at
  ASSUMED_PCIE_GBPS, on the training stream.
- train: `fastpix train` on 8 demo pairs at batch 1 (one epoch = 8 iterations, a save at each epoch's end),
  print_freq 4, EPOCHS epochs, save_epoch_freq off (every save the same set). The save after iteration 8k falls in
  the logging window 8k+1..8k+4 ("with a save"); 8k+5..8k+8 is "without" (the writer may still run in it). The
  first epoch (warm-up) and the first save (it allocates the buffers) are reported apart. The reference fp32 step
  (eager fp32 NCHW, per-parameter Adam) is timed before and after, not interleaved (interleaving would hand the
  writer the reference's time). Run twice: background writer, then the synchronous save (loop.save replaced).
Every section records the load average (1 min) at its start and end: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastpix import runtime
from fastpix.bench_suites.common import cpu_machine
from fastpix.models import define_D, define_G
from fastpix.store.checkpoint_set import write_set
from fastpix.store.checkpoint_writer import CheckpointWriter
from fastpix.store.run_folder import TRAIN_STATE, RunFolder
from fastpix.store.snapshot import Snapshotter
from fastpix.store.weights import torch_bytes, weights_bytes
from fastpix.train.engine import TrainEngine
from fastpix.train.step import Pix2PixStep

SIZE, NGF, PAIRS, EPOCHS, PRINT_FREQ = 256, 64, 8, 6, 4
ASSUMED_PCIE_GBPS = 20.0  # pinned device-to-host copies on PCIe Gen5 x16, as measured copies commonly reach


def load() -> float:
    return round(os.getloadavg()[0], 2)


def step_at_default_precision():
    """(G, D, step, A, B) as `fastpix train` builds them on this CPU, after two steps."""
    torch.manual_seed(0)
    precision = runtime.resolve_precision(None, "cpu")
    fmt = torch.channels_last if runtime.channels_last("cpu", precision) else torch.preserve_format
    G = define_G(3, 3, NGF, "unet_256", "batch", True, backend="eager").train().to(memory_format=fmt)
    D = define_D(6, NGF, "basic", backend="eager").train().to(memory_format=fmt)
    engine = TrainEngine(Pix2PixStep(G, D, precision=precision, device_type="cpu"), torch.device("cpu"))
    A, B = torch.rand(1, 3, SIZE, SIZE) * 2 - 1, torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    for _ in range(2):
        engine(A, B)
    return G, D, engine, A, B, precision


def train_state(engine, iteration: int) -> dict:
    return {
        "epoch": 1,
        "position": iteration,
        "iteration": iteration,
        "optimizers": engine.step.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "dropout_rng": {"G": {}, "D": {}},
    }


def synchronous_save(run_dir: str, G, D, state: dict):
    """The save of main before the background writer: every byte made, then written, on the calling thread."""
    info = {k: state[k] for k in ("iteration", "epoch", "position")}
    files = {
        "latest_net_G.safetensors": weights_bytes(G, info),
        "latest_net_D.safetensors": weights_bytes(D, info),
        TRAIN_STATE: torch_bytes(state),
    }
    write_set(run_dir, files, info)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def stall(workdir: str, rounds: int) -> dict:
    G, D, engine, A, B, precision = step_at_default_precision()
    run = RunFolder(workdir, "stall")
    os.makedirs(run.dir, exist_ok=True)
    result = {
        "precision": precision,
        "load_start": load(),
        "synchronous_save_s": [],
        "first_snapshot_s": [],
        "snapshot_s": [],
        "writer_s": [],
    }
    for i in range(rounds):
        result["synchronous_save_s"].append(timed(synchronous_save, run.dir, G, D, train_state(engine, i)))
    snapshots, writer = Snapshotter(), CheckpointWriter(run)
    for i in range(rounds + 1):  # the first snapshot allocates the buffers the others reuse
        engine(A, B)
        start = time.perf_counter()
        taken = snapshots.take({"G": G, "D": D}, train_state(engine, 100 + i))
        took = time.perf_counter() - start
        writer.submit(taken)
        writer.wait()
        result["writer_s"].append(time.perf_counter() - start - took)
        result["snapshot_s" if i else "first_snapshot_s"].append(took)
    tensors = [t for net in taken.nets.values() for t in net.values()] + list(_tensors(taken.train_state))
    result["snapshot_bytes"] = sum(t.untyped_storage().nbytes() for t in tensors)
    result["snapshot_tensors"] = len(tensors)
    result["h100_estimate_ms"] = 1000 * result["snapshot_bytes"] / (ASSUMED_PCIE_GBPS * 1e9)
    result["load_end"] = load()
    return result


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def reference_step_s(steps: int) -> list[float]:
    """The reference's step: eager fp32 NCHW, per-parameter Adam (bench/cpu_compare.py's case a)."""
    torch.manual_seed(0)
    G = define_G(3, 3, NGF, "unet_256", "batch", True, backend="eager").train()
    D = define_D(6, NGF, "basic", backend="eager").train()
    engine = TrainEngine(Pix2PixStep(G, D, precision="fp32", device_type="cpu"), torch.device("cpu"))
    A, B = torch.rand(1, 3, SIZE, SIZE) * 2 - 1, torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    times = []
    for i in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        engine(A, B)
        engine.read_losses()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return times


def train_run(workdir: str, data: str, name: str, synchronous: bool) -> dict:
    from fastpix.config import DataConfig, ModelConfig, TrainConfig
    from fastpix.train import loop

    stalls, real_save = [], loop.save

    def timed_save(s, cursor, tags=()):
        if synchronous:  # main before the background writer: the train state as loop.save builds it, written here
            state = train_state(s.engine, cursor.iteration)
            state.update(epoch=cursor.epoch, position=cursor.position)
            stalls.append(timed(synchronous_save, s.run.dir, s.G, s.D, state))
        else:
            stalls.append(timed(real_save, s, cursor, tags))

    cfg = TrainConfig(
        name=name,
        checkpoints_dir=workdir,
        batch_size=1,
        print_freq=PRINT_FREQ,
        display_freq=10**9,
        save_epoch_freq=10**9,
        max_iters=EPOCHS * PAIRS,
    )
    started, load_start = time.perf_counter(), load()
    with mock.patch.object(loop, "save", timed_save):
        loop.train(ModelConfig(), DataConfig(dataroot=data), cfg, overwrite=True, progress=False)
    wall = time.perf_counter() - started
    with open(os.path.join(workdir, name, "metrics.jsonl")) as f:
        windows = {r["iter"]: r["ms_per_iter"] for r in map(json.loads, f) if r["iter"] % PRINT_FREQ == 0}
    after_first_epoch = {i: ms for i, ms in windows.items() if i > PAIRS}
    with_save = [ms for i, ms in after_first_epoch.items() if (i - PRINT_FREQ) % PAIRS == 0 and i > 2 * PAIRS]
    without = [ms for i, ms in after_first_epoch.items() if i % PAIRS == 0]
    return {
        "windows_ms": windows,
        "first_save_window_ms": windows.get(PAIRS + PRINT_FREQ),
        "with_save_ms": with_save,
        "without_save_ms": without,
        "with_over_without": float(np.median(with_save) / np.median(without)),
        "mean_ms_after_first_epoch": float(np.mean(list(after_first_epoch.values()))),
        "save_point_stall_s": stalls,
        "wall_s": wall,
        "load_start": load_start,
        "load_end": load(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="checkpoint_stall.json", help="where to write the results")
    parser.add_argument("--rounds", type=int, default=3, help="saves timed per kind in the stall section")
    parser.add_argument("--reference-steps", type=int, default=5, help="reference steps timed before and after")
    parser.add_argument("--skip-synchronous-run", action="store_true", help="leave out the synchronous train run")
    args = parser.parse_args(argv)
    from fastpix.data.demo import write_demo_dataset

    workdir = tempfile.mkdtemp(prefix="fastpix_checkpoint_stall_")
    results = {
        "machine": cpu_machine(),
        "assumed_pcie_gbps": ASSUMED_PCIE_GBPS,
    }
    results["stall"] = stall(workdir, args.rounds)
    print(f"stall: done (load {load()})", flush=True)
    data = write_demo_dataset(os.path.join(workdir, "data"), SIZE, {"train": PAIRS})
    reference = {"before_s": reference_step_s(args.reference_steps), "load_start": load()}
    results["train"] = {"background": train_run(workdir, data, "background", synchronous=False)}
    print(f"train (background writer): done (load {load()})", flush=True)
    if not args.skip_synchronous_run:
        results["train"]["synchronous"] = train_run(workdir, data, "synchronous", synchronous=True)
        print(f"train (synchronous save): done (load {load()})", flush=True)
    reference.update(after_s=reference_step_s(args.reference_steps), load_end=load())
    reference["ms"] = 1000 * float(np.median(reference["before_s"] + reference["after_s"]))
    results["reference_step"] = reference
    for run in results["train"].values():
        run["end_to_end_speedup"] = reference["ms"] / run["mean_ms_after_first_epoch"]
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(table(results))
    print(f"written {args.json}")


def table(results: dict) -> str:
    s = results["stall"]

    def ms(xs):
        return f"{1000 * float(np.median(xs)):.0f} ms ({', '.join(f'{1000 * x:.0f}' for x in xs)})"

    lines = [
        f"CPU {results['machine']['cpu']} ({results['machine']['threads']} threads), unet_256 batch 1 256², "
        f"{s['precision']}; load average (1 min) per section in brackets",
        f"stall per save  synchronous (main before): {ms(s['synchronous_save_s'])}  "
        f"background: snapshot {ms(s['snapshot_s'])}, first {ms(s['first_snapshot_s'])}  "
        f"[load {s['load_start']}-{s['load_end']}]",
        f"                writer (in the background) {ms(s['writer_s'])}; "
        f"snapshot {s['snapshot_bytes'] / 1e6:.0f} MB "
        f"in {s['snapshot_tensors']} tensors -> H100 estimate {s['h100_estimate_ms']:.0f} ms of copies on the "
        f"training stream at {results['assumed_pcie_gbps']:.0f} GB/s",
        f"reference fp32 step {results['reference_step']['ms']:.0f} ms "
        f"[load {results['reference_step']['load_start']}-{results['reference_step']['load_end']}]",
        f"{'train run':<12} {'with save ms/it':>16} {'without ms/it':>14} {'ratio':>6} {'first save':>11} "
        f"{'mean ms/it':>11} {'vs reference':>13} {'save point stalls ms':>22}",
    ]
    for name, r in results["train"].items():
        lines.append(
            f"{name:<12} {np.median(r['with_save_ms']):>16.0f} {np.median(r['without_save_ms']):>14.0f} "
            f"{r['with_over_without']:>5.2f}x {r['first_save_window_ms']:>11.0f} "
            f"{r['mean_ms_after_first_epoch']:>11.0f} {r['end_to_end_speedup']:>12.2f}x "
            f"{', '.join(f'{1000 * x:.0f}' for x in r['save_point_stall_s']):>22} "
            f"[load {r['load_start']}-{r['load_end']}]"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
