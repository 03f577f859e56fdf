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


def relaunch_with_torchrun(nproc: int, argv: list[str]) -> int:
    """`fastpix train --nproc N ...` is `torchrun --nproc_per_node N -m fastpix train ...`."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "fastpix", *argv]
    return subprocess.call(cmd)
