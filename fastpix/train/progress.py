"""What a training run reports: metrics.jsonl, the progress bar, TensorBoard, Weights & Biases, sample grids and
the loss plot. The loop calls `after_iteration` once per iteration; the cadences (print_freq, display_freq) are
decided here and nowhere else.
"""
from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
import torch
from PIL import Image

from fastpix.data.transforms import to_image_array
from fastpix.files import atomic_write
from fastpix.plot import write_loss_plot
from fastpix.store.run_folder import RunFolder

BOARD_SCALARS = ("G_GAN", "G_L1", "D_real", "D_fake", "lr", "img_per_s", "mfu")


def sample_grid(real_A, fake_B, real_B, max_rows=4) -> Image.Image:
    rows = [np.concatenate([to_image_array(t[i]) for t in (real_A, fake_B, real_B)], axis=1)
            for i in range(min(max_rows, real_A.shape[0]))]
    return Image.fromarray(np.concatenate(rows, axis=0))


def start_wandb(train_cfg, config: dict, folder: str):
    """A Weights & Biases run, as the reference's --use_wandb starts one; None (and one line) without wandb."""
    try:
        import wandb
    except ImportError:
        print("fastpix: --use_wandb: wandb is not installed (pip install wandb); logging to metrics.jsonl, "
              "loss.png and samples/ only", file=sys.stderr)
        return None
    return wandb.init(project=train_cfg.wandb_project_name, name=train_cfg.name, config=config, dir=folder)


class Progress:
    """Logging of one run. Only the main process writes; every process reads the losses at a print iteration
    (the one host synchronisation of a logging window)."""

    def __init__(self, run: RunFolder, cfgs, world, device, flops_per_image, peak, planned, iteration,
                 show_bar):
        model_cfg, data_cfg, train_cfg = cfgs
        self.run, self.cfg, self.world, self.device = run, train_cfg, world, device
        self.flops_per_image, self.peak = flops_per_image, peak
        self.main = world.is_main
        self.bar = self.board = self.wandb = None
        if show_bar:
            from tqdm import tqdm
            self.bar = tqdm(total=planned, initial=min(iteration, planned), unit="it", dynamic_ncols=True)
        if train_cfg.tensorboard and self.main:
            from torch.utils.tensorboard import SummaryWriter  # optional: pip install tensorboard
            # A resumed run writes the steps after its checkpoint again: TensorBoard drops the old ones.
            self.board = SummaryWriter(run.path("tensorboard"), purge_step=iteration + 1 if iteration else None)
        if train_cfg.use_wandb and self.main:
            self.wandb = start_wandb(train_cfg, {"model": dataclasses.asdict(model_cfg),
                                                 "data": dataclasses.asdict(data_cfg),
                                                 "train": dataclasses.asdict(train_cfg)}, run.dir)
        self.window_images, self.window_start = 0, time.perf_counter()  # throughput over the logging window
        self.engine_reported = None

    def after_iteration(self, engine, batch, epoch, iteration, lr, data_time):
        self.window_images += batch["A"].shape[0] * self.world.size
        if iteration % self.cfg.print_freq == 0 or iteration == 1:
            self.log(engine, batch, epoch, iteration, lr, data_time)
        if self.main and (iteration % self.cfg.display_freq == 0 or iteration == 1):
            self.samples(batch, engine.fake_B, iteration)
        if self.bar is not None:
            self.bar.update(1)

    def log(self, engine, batch, epoch, iteration, lr, data_time):
        values = engine.read_losses()
        t_now = time.perf_counter()
        img_per_s = self.window_images / max(t_now - self.window_start, 1e-9)
        record = {"epoch": epoch, "iter": iteration, "lr": lr, **{k: round(v, 5) for k, v in values.items()},
                  "img_per_s": round(img_per_s, 2),
                  "ms_per_iter": round(1000 * (t_now - self.window_start) * self.world.size * batch["A"].shape[0]
                                       / max(self.window_images, 1), 3),
                  "data_time": round(data_time, 5)}
        if self.peak:
            record["mfu"] = round(self.flops_per_image * img_per_s / self.peak, 4)
        report = engine.report()  # what the engine runs (CUDA graph or eager, per-layer choices), when it changes
        if report != self.engine_reported:
            record["engine"] = self.engine_reported = report
        if self.device.type == "cuda":
            record["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(self.device) / 2 ** 30, 3)
        self.window_images, self.window_start = 0, t_now
        if self.main:
            self.run.log(record)
        scalars = {f"train/{k}": record[k] for k in BOARD_SCALARS if record.get(k) is not None}
        if self.board is not None:
            for key, value in scalars.items():
                self.board.add_scalar(key, value, iteration)
        if self.wandb is not None:
            self.wandb.log({**scalars, "epoch": epoch}, step=iteration)
        if self.bar is not None:
            speed = {"img/s": f"{img_per_s:.1f}", "ms/it": f"{record['ms_per_iter']:.1f}"}
            if "mfu" in record:
                speed["MFU"] = f"{100 * record['mfu']:.1f}%"
            if "peak_mem_gb" in record:
                speed["mem"] = f"{record['peak_mem_gb']:.1f}G"
            self.bar.set_postfix({"epoch": epoch, **speed, **{k: f"{v:.3f}" for k, v in values.items()}})

    def note(self, line: str):
        """One line for the user, above the progress bar when there is one."""
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def samples(self, batch, fake_B, iteration):
        grid = sample_grid(batch["A"], fake_B, batch["B"])
        path = self.run.path(f"samples/iter_{iteration:07d}.png")
        atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))
        write_loss_plot(self.run.path("metrics.jsonl"), self.run.path("loss.png"))
        if self.board is not None:
            self.board.add_image("samples/A_fake_B", np.asarray(grid), iteration, dataformats="HWC")
        if self.wandb is not None:
            import wandb
            self.wandb.log({"samples/A_fake_B": wandb.Image(grid)}, step=iteration)

    def close(self, failing: bool):
        """Close the writers and draw the final loss plot; while an error is on its way out, a failure here (a full
        disk again) is not raised over it."""
        try:
            if self.bar is not None:
                self.bar.close()
            if self.board is not None:
                self.board.close()
            if self.wandb is not None:
                self.wandb.finish()
            if self.main and self.run.has_log():
                write_loss_plot(self.run.path("metrics.jsonl"), self.run.path("loss.png"))
        except Exception:  # noqa: BLE001
            if not failing:
                raise
