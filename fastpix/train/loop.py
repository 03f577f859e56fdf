"""`fastpix train`: epochs of the pix2pix iteration over a PairedDataset, with logs, samples and exact resume.

Resume is exact because everything random is either a function of (seed, epoch, index) — the shuffle, the
crops and flips — or saved: the torch RNG (dropout), the optimizers, and the position inside the epoch.

Reading order: train (lock, one-line errors) → _train (data, models, step, start point) → run_epochs (the learning
rate, the save after each epoch) → run_epoch (the iterations: step, progress, stop, the save cadence). A save only
snapshots the state here; the background writer (store/checkpoint_writer.py) writes it while training goes on, and
`background_saves` waits for it at the run's end. What is logged and when lives in progress.py; how a signal stops
the run in stop.py; the files in fastpix/store/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any

import torch

from fastpix.config import TrainConfig, check_model, model_kind
from fastpix.data import DATASETS
from fastpix.data.dataset import DataError, PairedDataset
from fastpix.data.stream import make_pipeline
from fastpix.errors import CheckpointError, ConfigError
from fastpix.models import build_models
from fastpix.models.fused import dropout_rng_states, load_dropout_rng_states
from fastpix.peaks import peak_flops
from fastpix.runtime import channels_last, resolve_precision, set_tf32
from fastpix.store.checkpoint_set import recover
from fastpix.store.checkpoint_writer import CheckpointWriter
from fastpix.store.run_folder import TRAIN_STATE, RunFolder
from fastpix.store.snapshot import Snapshotter
from fastpix.store.weights import load_into
from fastpix.train import distributed
from fastpix.train.engine import TrainEngine
from fastpix.train.flops import train_flops_per_image
from fastpix.train.progress import Progress, on_terminal
from fastpix.train.schedule import learning_rate
from fastpix.train.step import Pix2PixStep
from fastpix.train.stop import Stopped, StopRequest

STOP_SYNC_EVERY = 10
SLOW_SAVE_S = 2.0  # a save point that waits longer than this for the previous save's writing says so


def wrap_for_training(G, D, model_cfg, world, device):
    """The modules the step runs: DDP across ranks, SyncBatchNorm if asked, torch.compile for that backend.

    Checkpoints are always written from the unwrapped G and D, so their keys stay the reference's.
    """
    G_run, D_run = G, D
    if model_cfg.norm == "syncbatch":
        if not world.distributed or device.type != "cuda":
            raise ConfigError("--norm syncbatch needs several GPU processes (--nproc N on CUDA)")
        G_run = torch.nn.SyncBatchNorm.convert_sync_batchnorm(G_run)
        D_run = torch.nn.SyncBatchNorm.convert_sync_batchnorm(D_run)
    if world.distributed:
        ids = [device.index] if device.type == "cuda" else None
        G_run = torch.nn.parallel.DistributedDataParallel(G_run, device_ids=ids)
        D_run = torch.nn.parallel.DistributedDataParallel(D_run, device_ids=ids)
    if model_cfg.backend == "compile":
        G_run, D_run = torch.compile(G_run), torch.compile(D_run)
    return G_run, D_run


@dataclasses.dataclass
class Cursor:
    """Where a run stands: its epoch, the items of that epoch done, the iterations done in all."""

    epoch: int
    position: int
    iteration: int


@dataclasses.dataclass
class Session:
    """What the epochs of one run work with."""

    cfg: TrainConfig
    run: RunFolder
    world: distributed.World
    device: torch.device
    dataset: PairedDataset
    loader: Any  # make_pipeline's: a DataLoader or one of fastpix.data's loaders, iterated once per epoch
    G: torch.nn.Module
    D: torch.nn.Module
    step: Pix2PixStep
    engine: TrainEngine = dataclasses.field(init=False)  # built once the start point is known
    progress: Progress = dataclasses.field(init=False)
    snapshots: Snapshotter | None = None  # the main process's: it alone writes checkpoints
    writer: CheckpointWriter | None = None


def train(model_cfg, data_cfg, train_cfg, overwrite=False, progress=True) -> str:
    """Train and return the run folder. Raises DataError/CheckpointError with messages naming the problem.

    progress: a progress bar where a person watches (a terminal); False (--quiet), or no terminal, prints a line
    every --print_freq iterations instead (train/progress.py)."""
    check_model(model_cfg, data_cfg)
    world, device = distributed.setup(train_cfg.device)
    run = RunFolder(train_cfg.checkpoints_dir, train_cfg.name)
    if not os.path.isdir(run.dir):
        check_run_folder(run, train_cfg, overwrite)  # a --continue_train of a misspelt --name leaves no folder
    try:
        with run.locked() if world.is_main else contextlib.nullcontext():
            show_bar = progress and world.is_main and on_terminal()
            return _train(run, (model_cfg, data_cfg, train_cfg), world, device, overwrite, show_bar)
    except KeyboardInterrupt as exc:
        if str(exc):
            raise
        raise KeyboardInterrupt("interrupted while preparing the run; nothing was trained or saved") from None
    finally:
        distributed.teardown(world)


def weights_tag(train_cfg) -> str:
    """Which weights --continue_train loads, as the reference: iter_<load_iter> if load_iter > 0, else <epoch>."""
    return f"iter_{train_cfg.load_iter}" if train_cfg.load_iter > 0 else str(train_cfg.epoch)


def check_run_folder(run: RunFolder, train_cfg, overwrite: bool):
    """Refuse, before any work, a new run over an old one and a --continue_train with nothing to continue from."""
    tag = weights_tag(train_cfg)
    if train_cfg.continue_train:
        if not (tag == "latest" and run.has_checkpoint()) and "G" not in run.weights(tag):
            raise CheckpointError(
                f"--continue_train: {run.dir} holds no checkpoint to resume and no "
                f"{tag}_net_G.safetensors or {tag}_net_G.pth to start from"
            )
    elif not overwrite and (run.has_checkpoint() or run.weights("latest")):
        raise CheckpointError(
            f"{run.dir} already holds a run: pass --continue_train to resume it, "
            "--overwrite to start again, or another --name"
        )


def _train(run, cfgs, world, device, overwrite, show_bar):
    model_cfg, data_cfg, train_cfg = cfgs
    if world.is_main and os.path.isdir(run.dir):
        recover(run.dir)  # a save cut short: finished if it was committed, its temporaries removed if not
    distributed.any_rank(False, world, device)  # the other ranks look at the folder once it is recovered
    check_run_folder(run, train_cfg, overwrite)
    precision = resolve_precision(train_cfg.precision, device)
    set_tf32(train_cfg.tf32)
    cuda_graphs = train_cfg.cuda_graphs
    if cuda_graphs is None:
        cuda_graphs = device.type == "cuda" and model_cfg.backend != "compile"
    torch.manual_seed(train_cfg.seed)
    dataset, loader = training_data(cfgs, world, device, show_bar)
    G, D = build_models(model_cfg, backend="eager" if model_cfg.backend == "compile" else None)
    memory_format = torch.channels_last if channels_last(device, precision) else torch.preserve_format
    G.to(device, memory_format=memory_format).train()
    D.to(device, memory_format=memory_format).train()
    flops_per_image = train_flops_per_image(G, D, model_cfg.input_nc, model_cfg.output_nc, data_cfg.crop_size)
    G_run, D_run = wrap_for_training(G, D, model_cfg, world, device)
    step = Pix2PixStep(
        G_run,
        D_run,
        train_cfg.lr,
        train_cfg.beta1,
        train_cfg.gan_mode,
        train_cfg.lambda_L1,
        precision,
        device.type,
        graph_safe=cuda_graphs,
    )
    s = Session(train_cfg, run, world, device, dataset, loader, G, D, step)
    cursor = start_point(s)
    if world.rank > 0:
        torch.manual_seed(train_cfg.seed + 7919 * world.rank)  # other dropout masks on other ranks
    s.engine = TrainEngine(step, device, cuda_graphs)
    if world.is_main:  # with the precision decided, not the flag's None
        run.write_config(model_cfg, data_cfg, dataclasses.replace(train_cfg, precision=precision))
    s.progress = Progress(
        run,
        cfgs,
        world,
        device,
        G,
        (flops_per_image, peak_flops(device, precision)),
        (planned_iterations(train_cfg, len(dataset), world), len(dataset)),
        cursor,
        show_bar,
    )
    failing = True
    try:
        with StopRequest() as stop, background_saves(s):
            run_epochs(s, cursor, stop)
        failing = False
    finally:
        s.progress.close(failing)
    if stop:
        raise Stopped(
            stop.signum,
            f"{stop.signal_name}: stopped after iteration {cursor.iteration}, checkpoint "
            f"saved in {run.dir} (resume with --continue_train)",
        )
    return run.dir


def training_data(cfgs, world, device, show_bar: bool):
    """The training split, and the loader that makes its batches for this rank."""
    model_cfg, data_cfg, train_cfg = cfgs
    dataset = DATASETS[model_kind(vars(model_cfg), vars(data_cfg))](
        data_cfg.dataroot,
        train_cfg.phase,
        data_cfg.direction,
        model_cfg.input_nc,
        model_cfg.output_nc,
        data_cfg.preprocess,
        data_cfg.load_size,
        data_cfg.crop_size,
        not data_cfg.no_flip,
        data_cfg.max_dataset_size,
        train_cfg.seed,
        data_cfg.skip_bad_images,
    )
    # The decode-once cache by default (see fastpix.data.stream.make_pipeline): batches equal the DataLoader's.
    loader = make_pipeline(
        dataset,
        train_cfg.batch_size,
        train_cfg.seed,
        world.rank,
        world.size,
        device,
        data_cfg.data_pipeline,
        data_cfg.num_threads,
        data_cfg.cache_dir,
        shuffle=not train_cfg.serial_batches,
        progress=show_bar,
        cache_max_gb=data_cfg.cache_max_gb,
    )
    return dataset, loader


def planned_iterations(train_cfg, n_items: int, world) -> int:
    last_epoch = train_cfg.n_epochs + train_cfg.n_epochs_decay
    batches_per_epoch = n_items // train_cfg.batch_size if world.distributed else -(-n_items // train_cfg.batch_size)
    planned = (last_epoch - train_cfg.epoch_count + 1) * batches_per_epoch
    return planned if train_cfg.max_iters is None else min(planned, train_cfg.max_iters)


def start_point(s: Session) -> Cursor:
    """Exact resume from the newest complete save; or, for --continue_train on weights alone (a reference run, a
    pretrained model, --epoch/--load_iter naming older weights), those weights with fresh optimizers; or a new run."""
    cfg, run = s.cfg, s.run
    tag = weights_tag(cfg)
    if cfg.continue_train and tag == "latest" and run.has_checkpoint():
        state = resume(s)
        if s.world.is_main:
            run.truncate_log(state["iteration"])  # the iterations after the save are run (and logged) again
        return Cursor(state["epoch"], state["position"], state["iteration"])
    if cfg.continue_train:
        paths = run.weights(tag)
        for net, path in paths.items():
            load_into(getattr(s, net), path)
        if s.world.is_main:
            names = " and ".join(os.path.basename(p) for p in paths.values())
            print(
                f"fastpix: --continue_train: training from {names} in {run.dir} with fresh optimizers"
                f"{'' if 'D' in paths else ' and a new discriminator'}, from epoch {cfg.epoch_count}"
            )
    if s.world.is_main:
        os.makedirs(run.dir, exist_ok=True)
        if run.has_log():
            os.remove(run.path("metrics.jsonl"))
    return Cursor(cfg.epoch_count, 0, 0)


def resume(s: Session) -> dict:
    G_state, D_state, state = s.run.load()
    path = s.run.path(TRAIN_STATE)
    load_into(s.G, s.run.path("latest_net_G.safetensors"), G_state)
    load_into(s.D, s.run.path("latest_net_D.safetensors"), D_state)
    try:
        s.step.load_state_dict(state["optimizers"])
        for net, tag in ((s.G, "G"), (s.D, "D")):  # the fused kernels' dropout counters (backend triton)
            load_dropout_rng_states(net, state.get("dropout_rng", {}).get(tag, {}))
        torch.set_rng_state(state["torch_rng"])
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: does not fit this run's optimizers or RNG ({exc})") from exc
    if "cuda_rng" in state and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state


def save(s: Session, cursor: Cursor, tags=()):
    """One checkpoint set: the weights, and the train state that makes resume exact. Only its snapshot is taken
    here, once the previous save is written (at most one in flight); the background writer writes it."""
    assert s.writer is not None and s.snapshots is not None, "only the main process saves"
    if not s.writer.wait(SLOW_SAVE_S):
        wait_for_writer(s)
    state = {
        "epoch": cursor.epoch,
        "position": cursor.position,
        "iteration": cursor.iteration,
        "optimizers": s.step.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "dropout_rng": {"G": dropout_rng_states(s.G), "D": dropout_rng_states(s.D)},
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    s.writer.submit(s.snapshots.take({"G": s.G, "D": s.D}, state, tags))


def wait_for_writer(s: Session):
    """Wait for the save in flight, saying so in one line; its error, if it failed, is raised here."""
    assert s.writer is not None, "only the main process saves"
    if s.writer.writing is not None:
        s.progress.note(f"fastpix: waiting for the checkpoint of iteration {s.writer.writing} to be written…")
    s.writer.wait()


@contextlib.contextmanager
def background_saves(s: Session):
    """The main process's checkpoint writer, for the epochs inside. The run returns only once every save is
    written (the last one's error, a full disk, is then the run's); a second Ctrl-C abandons the save in flight
    (not committed: the previous set stands); any other error first lets the save in flight finish, as a
    synchronous save made before the error would have."""
    if not s.world.is_main:
        yield
        return
    s.snapshots, s.writer = Snapshotter(), CheckpointWriter(s.run)
    try:
        yield
        wait_for_writer(s)
    except KeyboardInterrupt:
        s.writer.abandon()
        raise
    except BaseException:
        try:
            wait_for_writer(s)
        except KeyboardInterrupt:
            s.writer.abandon()
        except Exception:  # noqa: BLE001 - the save failed too: the error on its way out is the one to report
            pass
        raise


def reached_max(cfg, iteration: int) -> bool:
    return cfg.max_iters is not None and iteration >= cfg.max_iters


def run_epochs(s: Session, cursor: Cursor, stop: StopRequest):
    """Epochs from the cursor to the last (or to max_iters, or to a stop request); each whole epoch is saved, and
    every save_epoch_freq-th under its number too."""
    cfg = s.cfg
    last_epoch = cfg.n_epochs + cfg.n_epochs_decay
    while cursor.epoch <= last_epoch and not reached_max(cfg, cursor.iteration):
        lr = learning_rate(
            cfg.lr_policy, cfg.lr, cursor.epoch, cfg.epoch_count, cfg.n_epochs, cfg.n_epochs_decay, cfg.lr_decay_iters
        )
        s.step.set_lr(lr)
        whole_epoch, before = cursor.position == 0, cursor.iteration
        if run_epoch(s, cursor, lr, stop):
            return
        if whole_epoch and cursor.iteration == before:  # never save untrained weights as a trained epoch
            raise DataError(
                f"{s.dataset.split}: no readable pair in epoch {cursor.epoch} "
                "(every image was skipped as unreadable): nothing to train on"
            )
        tags = [str(cursor.epoch)] if cursor.epoch % cfg.save_epoch_freq == 0 else []
        cursor.epoch, cursor.position = cursor.epoch + 1, 0
        if s.world.is_main:
            save(s, cursor, tags)
        s.progress.end_of_epoch(cursor.epoch - 1, cursor.iteration)


def run_epoch(s: Session, cursor: Cursor, lr: float, stop: StopRequest) -> bool:
    """The iterations of one epoch from the cursor; True when the run is to stop (max_iters or a signal)."""
    cfg, n = s.cfg, len(s.dataset)
    s.loader.sampler.set_position(cursor.epoch, cursor.position)
    s.dataset.set_epoch(cursor.epoch)
    t_data = time.perf_counter()
    for batch in s.loader:
        cursor.position = min(cursor.position + cfg.batch_size, n)
        if batch is None:
            continue
        data_time = time.perf_counter() - t_data
        s.engine(batch["A"], batch["B"])
        cursor.iteration += 1
        if s.writer is not None:
            s.writer.check()  # a background save that failed stops the run now, not at the next save point
        s.progress.after_iteration(s.engine, batch, cursor, lr, data_time)
        done = reached_max(cfg, cursor.iteration)
        stopping = stop_agreed(s, stop, cursor.iteration, done)
        cadence = cursor.iteration % cfg.save_latest_freq == 0
        if s.world.is_main and (done or stopping or cadence):
            at_end = cursor.position >= n
            tags = [f"iter_{cursor.iteration}"] if cadence and cfg.save_by_iter else []
            save(s, Cursor(cursor.epoch + at_end, 0 if at_end else cursor.position, cursor.iteration), tags)
        if done or stopping:
            if cursor.position >= n:  # the run ends with this epoch: it still gets its line
                s.progress.end_of_epoch(cursor.epoch, cursor.iteration)
            return True
        t_data = time.perf_counter()
    return False


def stop_agreed(s: Session, stop: StopRequest, iteration: int, done: bool) -> bool:
    """A single process stops at the iteration after a signal. Several agree every STOP_SYNC_EVERY iterations (an
    all-reduce, so not every iteration: it would wait for the device), so that all stop at the same one."""
    if not s.world.distributed:
        return bool(stop)
    if done or iteration % STOP_SYNC_EVERY == 0:
        return distributed.any_rank(bool(stop), s.world, s.device)
    return False
