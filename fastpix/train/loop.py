"""`fastpix train`: epochs of the pix2pix iteration over a PairedDataset, with logs, samples and exact resume.

Resume is exact because everything random is either a function of (seed, epoch, index) — the shuffle, the
crops and flips — or saved: the torch RNG (dropout), the optimizers, and the position inside the epoch.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time

import numpy as np
import torch
from PIL import Image

from fastpix import checkpoint as ckpt
from fastpix.data.dataset import PairedDataset
from fastpix.data.stream import make_pipeline
from fastpix.data.transforms import to_image_array
from fastpix.models import build_models
from fastpix.models.fused import dropout_rng_states, load_dropout_rng_states
from fastpix.plot import write_loss_plot
from fastpix.runtime import channels_last, default_device, resolve_precision, set_tf32  # noqa: F401
from fastpix.train import distributed
from fastpix.train.engine import TrainEngine
from fastpix.train.flops import peak_flops, train_flops_per_image
from fastpix.train.schedule import lr_multiplier
from fastpix.train.step import Pix2PixStep


def sample_grid(real_A, fake_B, real_B, max_rows=4) -> Image.Image:
    rows = [np.concatenate([to_image_array(t[i]) for t in (real_A, fake_B, real_B)], axis=1)
            for i in range(min(max_rows, real_A.shape[0]))]
    return Image.fromarray(np.concatenate(rows, axis=0))


class Run:
    """The files of one training run: <checkpoints_dir>/<name>/."""

    def __init__(self, checkpoints_dir, name):
        self.dir = os.path.join(checkpoints_dir, name)

    def path(self, filename):
        return os.path.join(self.dir, filename)

    def has_checkpoint(self):
        return os.path.isfile(self.path("latest_train_state.pt"))

    def log(self, record: dict):
        with open(self.path("metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")


def save_checkpoint(run: Run, G, D, step: Pix2PixStep, epoch: int, position: int, iteration: int,
                    epoch_tag: str | None = None):
    """Weights first, train state last: the state names the iteration its weights must carry."""
    meta = {"iteration": iteration, "epoch": epoch, "position": position}
    for tag in ["latest"] + ([epoch_tag] if epoch_tag else []):
        ckpt.save_weights(run.path(f"{tag}_net_G.safetensors"), G, meta)
        ckpt.save_weights(run.path(f"{tag}_net_D.safetensors"), D, meta)
    state = {"epoch": epoch, "position": position, "iteration": iteration, "optimizers": step.state_dict(),
             "torch_rng": torch.get_rng_state(),
             "dropout_rng": {"G": dropout_rng_states(G), "D": dropout_rng_states(D)}}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    ckpt.save_train_state(run.path("latest_train_state.pt"), state)


def load_checkpoint(run: Run, G, D, step: Pix2PixStep) -> dict:
    state = ckpt.load_train_state(run.path("latest_train_state.pt"))
    for net, tag in ((G, "G"), (D, "D")):
        path = run.path(f"latest_net_{tag}.safetensors")
        ckpt.load_into(net, path)
        saved_at = ckpt.weights_metadata(path).get("iteration")
        if saved_at is not None and int(saved_at) != state["iteration"]:
            raise ckpt.CheckpointError(f"{path} is from iteration {saved_at} but the train state is from "
                                       f"{state['iteration']}: the last save was interrupted")
    step.load_state_dict(state["optimizers"])
    for net, tag in ((G, "G"), (D, "D")):  # the fused kernels' dropout counters (backend triton)
        load_dropout_rng_states(net, state.get("dropout_rng", {}).get(tag, {}))
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state


def wrap_for_training(G, D, model_cfg, world, device):
    """The modules the step runs: DDP across ranks, SyncBatchNorm if asked, torch.compile for that backend.

    Checkpoints are always written from the unwrapped G and D, so their keys stay the reference's.
    """
    G_run, D_run = G, D
    if model_cfg.norm == "syncbatch":
        if not world.distributed or device.type != "cuda":
            raise ValueError("--norm syncbatch needs several GPU processes (--nproc N on CUDA)")
        G_run = torch.nn.SyncBatchNorm.convert_sync_batchnorm(G_run)
        D_run = torch.nn.SyncBatchNorm.convert_sync_batchnorm(D_run)
    if world.distributed:
        ids = [device.index] if device.type == "cuda" else None
        G_run = torch.nn.parallel.DistributedDataParallel(G_run, device_ids=ids)
        D_run = torch.nn.parallel.DistributedDataParallel(D_run, device_ids=ids)
    if model_cfg.backend == "compile":
        G_run, D_run = torch.compile(G_run), torch.compile(D_run)
    return G_run, D_run


def train(model_cfg, data_cfg, train_cfg, overwrite=False, progress=True) -> str:
    """Train and return the run folder. Raises DataError/CheckpointError with messages naming the problem."""
    world, device = distributed.setup(train_cfg.device)
    try:
        return _train(model_cfg, data_cfg, train_cfg, world, device, overwrite, progress and world.is_main)
    finally:
        distributed.teardown(world)


def _train(model_cfg, data_cfg, train_cfg, world, device, overwrite, progress):
    run = Run(train_cfg.checkpoints_dir, train_cfg.name)
    if run.has_checkpoint() and not (train_cfg.continue_train or overwrite):
        raise ckpt.CheckpointError(f"{run.dir} already holds a run: pass --continue_train to resume it, "
                                   "--overwrite to start again, or another --name")
    precision = resolve_precision(train_cfg.precision, device)
    set_tf32(train_cfg.tf32)
    cuda_graphs = train_cfg.cuda_graphs
    if cuda_graphs is None:
        cuda_graphs = device.type == "cuda" and model_cfg.backend != "compile"
    torch.manual_seed(train_cfg.seed)
    dataset = PairedDataset(data_cfg.dataroot, "train", data_cfg.direction, model_cfg.input_nc, model_cfg.output_nc,
                            data_cfg.preprocess, data_cfg.load_size, data_cfg.crop_size, not data_cfg.no_flip,
                            data_cfg.max_dataset_size, train_cfg.seed, data_cfg.skip_bad_images)
    # The decode-once cache by default (see fastpix.data.stream.make_pipeline): batches equal the DataLoader's.
    loader = make_pipeline(dataset, train_cfg.batch_size, train_cfg.seed, world.rank, world.size, device,
                           data_cfg.data_pipeline, data_cfg.num_threads, data_cfg.cache_dir, progress=progress)
    sampler = loader.sampler
    G, D = build_models(model_cfg, backend="eager" if model_cfg.backend == "compile" else None)
    memory_format = torch.channels_last if channels_last(device, precision) else torch.preserve_format
    G.to(device, memory_format=memory_format).train()
    D.to(device, memory_format=memory_format).train()
    flops_per_image = train_flops_per_image(G, D, model_cfg.input_nc, model_cfg.output_nc, data_cfg.crop_size)
    peak = peak_flops(device, precision)
    G_run, D_run = wrap_for_training(G, D, model_cfg, world, device)
    step = Pix2PixStep(G_run, D_run, train_cfg.lr, train_cfg.beta1, train_cfg.gan_mode, train_cfg.lambda_L1,
                       precision, device.type, graph_safe=cuda_graphs)

    epoch, position, iteration = train_cfg.epoch_count, 0, 0
    if train_cfg.continue_train and run.has_checkpoint():
        state = load_checkpoint(run, G, D, step)
        epoch, position, iteration = state["epoch"], state["position"], state["iteration"]
    elif train_cfg.continue_train:
        raise ckpt.CheckpointError(f"--continue_train: {run.dir} holds no checkpoint to resume")
    elif world.is_main:
        os.makedirs(run.dir, exist_ok=True)
        if os.path.exists(run.path("metrics.jsonl")):
            os.remove(run.path("metrics.jsonl"))
    if world.rank > 0:
        torch.manual_seed(train_cfg.seed + 7919 * world.rank)  # other dropout masks on other ranks
    engine = TrainEngine(step, device, cuda_graphs)
    if world.is_main:
        ckpt.save_json(run.path("config.json"), {"model": dataclasses.asdict(model_cfg),
                                                 "data": dataclasses.asdict(data_cfg),
                                                 "train": dataclasses.asdict(train_cfg)})

    last_epoch = train_cfg.n_epochs + train_cfg.n_epochs_decay
    batches_per_epoch = len(dataset) // train_cfg.batch_size if world.distributed else \
        -(-len(dataset) // train_cfg.batch_size)
    planned = (last_epoch - train_cfg.epoch_count + 1) * batches_per_epoch
    if train_cfg.max_iters is not None:
        planned = min(planned, train_cfg.max_iters)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=planned, initial=min(iteration, planned), unit="it", dynamic_ncols=True)

    board = None
    if train_cfg.tensorboard and world.is_main:
        from torch.utils.tensorboard import SummaryWriter  # optional: pip install tensorboard
        board = SummaryWriter(run.path("tensorboard"))
    window_images, window_start = 0, time.perf_counter()  # throughput over the last logging window
    interrupted = []
    previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    try:
        while epoch <= last_epoch and (train_cfg.max_iters is None or iteration < train_cfg.max_iters):
            lr = train_cfg.lr * lr_multiplier(train_cfg.lr_policy, epoch, train_cfg.epoch_count, train_cfg.n_epochs,
                                              train_cfg.n_epochs_decay, train_cfg.lr_decay_iters)
            step.set_lr(lr)
            sampler.set_position(epoch, position)
            dataset.set_epoch(epoch)
            t_data = time.perf_counter()
            stop = False
            for batch in loader:
                position = min(position + train_cfg.batch_size, len(dataset))
                if batch is None:
                    continue
                t_start = time.perf_counter()
                engine(batch["A"], batch["B"])
                iteration += 1
                window_images += batch["A"].shape[0] * world.size
                done = train_cfg.max_iters is not None and iteration >= train_cfg.max_iters
                log_now = iteration % train_cfg.print_freq == 0 or iteration == 1
                if log_now or done:
                    stop = distributed.any_rank(bool(interrupted), world, device)  # all ranks stop together
                if log_now:
                    values = engine.read_losses()  # the only host synchronisation of a logging window
                    t_now = time.perf_counter()
                    img_per_s = window_images / max(t_now - window_start, 1e-9)
                    record = {"epoch": epoch, "iter": iteration, "lr": lr,
                              **{k: round(v, 5) for k, v in values.items()},
                              "img_per_s": round(img_per_s, 2),
                              "ms_per_iter": round(1000 * (t_now - window_start) * world.size * batch["A"].shape[0]
                                                   / max(window_images, 1), 3),
                              "data_time": round(t_start - t_data, 5)}
                    if peak:
                        record["mfu"] = round(flops_per_image * img_per_s / peak, 4)
                    if device.type == "cuda":
                        record["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3)
                    window_images, window_start = 0, t_now
                    if world.is_main:
                        run.log(record)
                    if board is not None:
                        for key in ("G_GAN", "G_L1", "D_real", "D_fake", "lr", "img_per_s", "mfu"):
                            if record.get(key) is not None:
                                board.add_scalar(f"train/{key}", record[key], iteration)
                    if bar is not None:
                        speed = {"img/s": f"{img_per_s:.1f}", "ms/it": f"{record['ms_per_iter']:.1f}"}
                        if "mfu" in record:
                            speed["MFU"] = f"{100 * record['mfu']:.1f}%"
                        if "peak_mem_gb" in record:
                            speed["mem"] = f"{record['peak_mem_gb']:.1f}G"
                        bar.set_postfix({"epoch": epoch, **speed, **{k: f"{v:.3f}" for k, v in values.items()}})
                if world.is_main and (iteration % train_cfg.display_freq == 0 or iteration == 1):
                    os.makedirs(run.path("samples"), exist_ok=True)
                    grid = sample_grid(batch["A"], engine.fake_B, batch["B"])
                    grid.save(run.path(f"samples/iter_{iteration:07d}.png"))
                    write_loss_plot(run.path("metrics.jsonl"), run.path("loss.png"))
                    if board is not None:
                        board.add_image("samples/A_fake_B", np.asarray(grid), iteration, dataformats="HWC")
                if bar is not None:
                    bar.update(1)
                if world.is_main and (done or stop or iteration % train_cfg.save_latest_freq == 0):
                    at_end = position >= len(dataset)
                    save_checkpoint(run, G, D, step, epoch + at_end, 0 if at_end else position, iteration)
                if done or stop:
                    break
                t_data = time.perf_counter()
            if stop or (train_cfg.max_iters is not None and iteration >= train_cfg.max_iters):
                break
            epoch_tag = str(epoch) if epoch % train_cfg.save_epoch_freq == 0 else None
            epoch, position = epoch + 1, 0
            if world.is_main:
                save_checkpoint(run, G, D, step, epoch, position, iteration, epoch_tag)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        if bar is not None:
            bar.close()
        if board is not None:
            board.close()
        if world.is_main and os.path.isfile(run.path("metrics.jsonl")):
            write_loss_plot(run.path("metrics.jsonl"), run.path("loss.png"))
    if interrupted:
        raise KeyboardInterrupt(f"interrupted at iteration {iteration}; saved {run.dir} (resume with "
                                "--continue_train)")
    return run.dir
