"""The run folder <checkpoints_dir>/<name>/ (layout: see fastpix/store/__init__.py): its files by name, the lock
held by the one `fastpix train` writing it, its metrics log, and a whole checkpoint saved and loaded as one set."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping

from fastpix.errors import CheckpointError
from fastpix.files import atomic_write_bytes
from fastpix.store.checkpoint_set import Stream, pending_files, read_manifest, verify_set, write_set
from fastpix.store.run_config import write_run_config
from fastpix.store.weights import load_train_state, load_weights, weights_metadata

WEIGHT_SUFFIXES = (".safetensors", ".pth")
TRAIN_STATE = "latest_train_state.pt"
METRICS = "metrics.jsonl"


def weights_in(run_dir: str, tag: str) -> dict:
    """{'G': path, 'D': path} of the <tag>_net_* files present (.safetensors preferred over .pth)."""
    found = {}
    pending = pending_files(run_dir)
    for net in ("G", "D"):
        for suffix in WEIGHT_SUFFIXES:
            name = f"{tag}_net_{net}{suffix}"
            if name in pending or os.path.isfile(os.path.join(run_dir, name)):
                found[net] = os.path.join(run_dir, name)
                break
    return found


def find_weights(run_dir: str, tag: str, net: str) -> str:
    """<tag>_net_<net>.safetensors, else the reference's .pth of the same name."""
    found = weights_in(run_dir, tag).get(net)
    if found is None:
        raise CheckpointError(
            f"{run_dir}: no {tag}_net_{net}.safetensors or {tag}_net_{net}.pth "
            "(is --name / --checkpoints_dir / --epoch right?)"
        )
    return found


class RunFolder:
    """The files of one training run: <checkpoints_dir>/<name>/."""

    def __init__(self, checkpoints_dir, name):
        self.dir = os.path.join(checkpoints_dir, name)

    def path(self, filename):
        return os.path.join(self.dir, filename)

    def has_checkpoint(self):
        return os.path.isfile(self.path(TRAIN_STATE))

    def weights(self, tag: str) -> dict:
        return weights_in(self.dir, tag)

    def write_config(self, model_cfg, data_cfg, train_cfg):
        write_run_config(self.dir, model_cfg, data_cfg, train_cfg)

    def has_log(self):
        return os.path.isfile(self.path(METRICS))

    def log(self, record: dict):
        with open(self.path(METRICS), "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_log(self, iteration: int):
        """Keep metrics.jsonl's records up to `iteration` (a resumed run logs the later ones again), dropping a
        line torn by a kill."""
        path = self.path(METRICS)
        if not os.path.isfile(path):
            return
        kept = []
        with open(path, "rb") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    if json.loads(line).get("iter", 0) <= iteration:
                        kept.append(line.rstrip(b"\n") + b"\n")
        atomic_write_bytes(path, b"".join(kept))

    def write(self, files: Mapping[str, bytes | Stream], info: dict, abandoned: Callable[[], bool] = lambda: False):
        """One checkpoint set, as a transaction (checkpoint_set.write_set); the files of a snapshot
        (store/snapshot.py), written by the background writer (store/checkpoint_writer.py)."""
        write_set(self.dir, files, info, abandoned)

    def load(self) -> tuple[dict, dict, dict]:
        """(G state, D state, train state) of the newest complete save, verified. Call checkpoint_set.recover first
        (in the one process that writes the folder: the others of a distributed run only read it)."""
        manifest = read_manifest(self.dir)
        state = load_train_state(self.path(TRAIN_STATE))
        nets = {}
        for net in ("G", "D"):
            path = self.path(f"latest_net_{net}.safetensors")
            nets[net] = load_weights(path)
            saved_at = weights_metadata(path).get("iteration")
            if saved_at is not None and int(saved_at) != state["iteration"]:
                raise CheckpointError(
                    f"{path} is from iteration {saved_at} but the train state is from "
                    f"{state['iteration']}: the last save was interrupted"
                )
        if manifest is not None:
            verify_set(self.dir, manifest)
        return nets["G"], nets["D"], state

    @contextlib.contextmanager
    def locked(self):
        """Refuse a second process on this folder. flock is released by the kernel when its holder exits, however
        it exits, so a lock left by a killed run never blocks the next."""
        import fcntl

        os.makedirs(self.dir, exist_ok=True)
        fd = os.open(self.path(".lock"), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                raise CheckpointError(
                    f"{self.dir} is in use by another fastpix train (pid {holder}): wait for it "
                    "to finish, or give another --name"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            yield self
        finally:
            os.close(fd)  # releases the flock
