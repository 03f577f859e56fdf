"""Multi-process training through torch.distributed (torchrun sets the environment; DDP does the work).

`--batch_size` is the global batch: each of the world's ranks takes its slice of every global batch, so a run
over N processes sees the same samples per step as a single process with the same batch size.
Only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fastpix.errors import ConfigError
from fastpix.runtime import default_device


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.size > 1


def setup(device_hint: str | None) -> tuple[World, torch.device]:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU); a single process needs nothing."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), default_device(device_hint)
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = torch.cuda.is_available() and (device_hint is None or device_hint.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return world, torch.device(f"cuda:{world.local_rank}" if use_cuda else "cpu")


def teardown(world: World):
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank if flag is true on any (so that all ranks stop at the same iteration)."""
    if not world.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def launch_world_size(nproc: int | None) -> int:
    """The number of processes this launch trains on: torchrun's WORLD_SIZE, else --nproc, else 1."""
    return int(os.environ.get("WORLD_SIZE", "0")) or nproc or 1


def check_world(batch_size: int, world_size: int, norm: str | None = None, cuda: bool = True):
    """Refuse what every rank would fail on later (after building the cache): --batch_size is the global batch,
    cut into equal per-process slices; SyncBatchNorm synchronises several GPU processes."""
    if batch_size % world_size:
        lower = batch_size - batch_size % world_size
        examples = " or ".join(str(b) for b in (lower, lower + world_size) if b > 0)
        raise ConfigError(
            f"--batch_size {batch_size} is the global batch, split over {world_size} processes: it "
            f"must be a multiple of {world_size} (e.g. {examples})"
        )
    if norm == "syncbatch" and (world_size < 2 or not cuda):
        raise ConfigError("--norm syncbatch needs several GPU processes (--nproc N, or torchrun, on CUDA)")


def relaunch_with_torchrun(nproc: int, argv: list[str]) -> int:
    """`fastpix train --nproc N ...` is `torchrun --nproc_per_node N -m fastpix train ...`."""
    import subprocess

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "fastpix",
        *argv,
    ]
    return subprocess.call(cmd)
