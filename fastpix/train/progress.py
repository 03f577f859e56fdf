"""What a training run reports: metrics.jsonl, lines on stdout or the progress bar, TensorBoard, Weights & Biases,
sample grids, validation (--val_freq) and the loss plot. The loop calls `after_iteration` once per iteration and
`end_of_epoch` after each epoch's save; the cadences (print_freq, display_freq, val_freq) are decided here and
nowhere else.

On a terminal a person watches the progress bar. Anywhere else (a pipe, a file, a scheduler's log) or with --quiet
there is no bar, and every --print_freq iterations one line in the reference's shape, which people grep:
    (epoch: 3, iters: 400, time: 0.231, data: 0.002) G_GAN: 0.693 G_L1: 12.345 D_real: 0.693 D_fake: 0.693
As in the reference, `iters` counts the images of the epoch done so far, `time` is the compute time per image and
`data` the time spent waiting for data per image, in seconds; here both are averaged over the --print_freq window
(the reference times the printed iteration alone, which on an asynchronous GPU measures only its launch). The start
(where a resumed run resumed), the end of each epoch (its duration, the speed, an ETA for the run) and the val
scores are said in both cases. Lines go to stdout, flushed, from the main process only.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
import time

import numpy as np
import torch

from fastpix.config import model_kind
from fastpix.data.pictures import pictures
from fastpix.files import atomic_write
from fastpix.plot import labelled_grid, write_loss_plot
from fastpix.store.run_folder import RunFolder
from fastpix.train.validate import make_validator

BOARD_SCALARS = ("G_GAN", "G_L1", "D_real", "D_fake", "lr", "img_per_s", "mfu")
# Column labels of the sample grids, in the order of fastpix.data.pictures.LABELS.
GRID_LABELS = {"pix2pix": ("A", "G(A)", "B"), "colorization": ("L", "B (colour)", "G(L) (colour)")}


def on_terminal() -> bool:
    """Whether a person is watching: stdout and stderr (the bar's stream) both terminals. Redirect either and a
    progress bar would leave carriage returns in a file."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def loss_line(epoch: int, images: int, t_comp: float, t_data: float, losses: dict) -> str:
    """The reference's print_current_losses line."""
    head = f"(epoch: {epoch}, iters: {images}, time: {t_comp:.3f}, data: {t_data:.3f})"
    return " ".join([head, *(f"{name}: {value:.3f}" for name, value in losses.items())])


def duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def sample_grid(real_A, fake_B, real_B, max_rows=4, kind="pix2pix"):
    """One row per image of the batch, up to max_rows, at the training size, under column labels: its pictures
    (fastpix.data.pictures: A, G(A), B; for colorization its L, real and predicted colours)."""
    rows = [
        list(pictures(real_A[i], fake_B[i], real_B[i], kind).values()) for i in range(min(max_rows, real_A.shape[0]))
    ]
    return labelled_grid(rows, GRID_LABELS[kind])


def start_wandb(train_cfg, config: dict, folder: str):
    """A Weights & Biases run, as the reference's --use_wandb starts one; None (and one line) without wandb."""
    try:
        import wandb
    except ImportError:
        print(
            "fastpix: --use_wandb: wandb is not installed (pip install wandb); logging to metrics.jsonl, "
            "loss.png and samples/ only",
            file=sys.stderr,
        )
        return None
    return wandb.init(project=train_cfg.wandb_project_name, name=train_cfg.name, config=config, dir=folder)


class Progress:
    """Logging of one run. Only the main process writes; every process reads the losses at a print iteration
    (the one host synchronisation of a logging window) and runs the validation (a SyncBatchNorm generator
    needs every rank in its forward)."""

    def __init__(self, run: RunFolder, cfgs, world, device, G, cost, plan, start, show_bar):
        """cost: (flops_per_image, the device's peak flop/s or None); plan: (planned iterations in all, images an
        epoch); start: the loop's cursor where this session begins."""
        model_cfg, data_cfg, train_cfg = cfgs
        self.run, self.cfg, self.world, self.device = run, train_cfg, world, device
        (self.flops_per_image, self.peak), (self.planned, self.n_items) = cost, plan
        self.kind = model_kind(vars(model_cfg), vars(data_cfg))
        self.main = world.is_main
        self.bar = self.board = self.wandb = None
        if show_bar:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.planned, initial=min(start.iteration, self.planned), unit="it", dynamic_ncols=True
            )
        if train_cfg.tensorboard and self.main:
            from torch.utils.tensorboard import SummaryWriter  # optional: pip install tensorboard

            # A resumed run writes the steps after its checkpoint again: TensorBoard drops the old ones.
            purge = start.iteration + 1 if start.iteration else None
            self.board = SummaryWriter(run.path("tensorboard"), purge_step=purge)
        if train_cfg.use_wandb and self.main:
            self.wandb = start_wandb(
                train_cfg,
                {
                    "model": dataclasses.asdict(model_cfg),
                    "data": dataclasses.asdict(data_cfg),
                    "train": dataclasses.asdict(train_cfg),
                },
                run.dir,
            )
        self.say_start(start)
        self.validator = make_validator(G, model_cfg, data_cfg, train_cfg, device, self.say)
        now = time.perf_counter()
        # the logging window (throughput, time and data per image), the epoch, and this session
        self.window_images, self.window_data, self.window_start = 0, 0.0, now
        self.epoch_start = self.session_start = now
        self.epoch_first = self.session_first = self.iteration = start.iteration
        self.engine_reported = None

    def say(self, line: str):
        """One line on stdout, from the main process; above the bar where there is one."""
        if not self.main:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def say_start(self, start):
        last_epoch = self.cfg.n_epochs + self.cfg.n_epochs_decay
        if start.iteration:
            self.say(
                f"fastpix: resumed {self.run.dir} at epoch {start.epoch}, iteration {start.iteration} "
                f"({start.position}/{self.n_items} images of the epoch done)"
            )
        else:
            capped = " (--max_iters)" if self.planned == self.cfg.max_iters else ""
            self.say(
                f"fastpix: training {self.run.dir}: {self.n_items} images an epoch, epochs {start.epoch} to "
                f"{last_epoch}, {self.planned} iterations{capped}"
            )

    def after_iteration(self, engine, batch, cursor, lr, data_time):
        iteration = self.iteration = cursor.iteration
        self.window_images += batch["A"].shape[0] * self.world.size
        self.window_data += data_time
        if iteration % self.cfg.print_freq == 0 or iteration == 1:
            self.log(engine, batch, cursor, lr, data_time)
        if self.validator is not None and iteration % self.cfg.val_freq == 0:
            started = time.perf_counter()
            self.validate(cursor)
            self.window_start += time.perf_counter() - started  # the throughput is training's alone
        if self.main and (iteration % self.cfg.display_freq == 0 or iteration == 1):
            self.samples(batch, engine.fake_B, iteration)
        if self.bar is not None:
            self.bar.update(1)

    def log(self, engine, batch, cursor, lr, data_time):
        values = engine.read_losses()
        t_now = time.perf_counter()
        elapsed = max(t_now - self.window_start, 1e-9)
        img_per_s = self.window_images / elapsed
        own_images = max(self.window_images / self.world.size, 1)  # this process's share, as the reference's
        record = {
            "epoch": cursor.epoch,
            "iter": cursor.iteration,
            "lr": lr,
            **{k: round(v, 5) for k, v in values.items()},
            "img_per_s": round(img_per_s, 2),
            "ms_per_iter": round(
                1000 * elapsed * self.world.size * batch["A"].shape[0] / max(self.window_images, 1), 3
            ),
            "data_time": round(data_time, 5),
            "t_comp": round(max(elapsed - self.window_data, 0.0) / own_images, 5),
            "t_data": round(self.window_data / own_images, 5),
        }
        if self.peak:  # a fastpix.peaks.Peak on a GPU, named in the first record
            record["mfu"] = round(self.flops_per_image * img_per_s / self.peak.flops, 4)
            if self.engine_reported is None:
                record["mfu_peak"] = self.peak.describe()
        report = engine.report()  # what the engine runs (CUDA graph or eager, per-layer choices), when it changes
        if report != self.engine_reported:
            record["engine"] = self.engine_reported = report
        if self.device.type == "cuda":
            record["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)
        self.window_images, self.window_data, self.window_start = 0, 0.0, t_now
        if self.main:
            self.run.log(record)
        self.publish(
            {f"train/{k}": record[k] for k in BOARD_SCALARS if record.get(k) is not None},
            cursor.iteration,
            epoch=cursor.epoch,
        )
        if self.bar is None:
            self.say(loss_line(cursor.epoch, cursor.position, record["t_comp"], record["t_data"], values))
            return
        speed = {"img/s": f"{img_per_s:.1f}", "ms/it": f"{record['ms_per_iter']:.1f}"}
        if "mfu" in record:
            speed["MFU"] = f"{100 * record['mfu']:.1f}%"
        if "peak_mem_gb" in record:
            speed["mem"] = f"{record['peak_mem_gb']:.1f}G"
        self.bar.set_postfix({"epoch": cursor.epoch, **speed, **{k: f"{v:.3f}" for k, v in values.items()}})

    def publish(self, scalars: dict, iteration: int, **extra):
        if self.board is not None:
            for key, value in scalars.items():
                self.board.add_scalar(key, value, iteration)
        if self.wandb is not None:
            self.wandb.log({**scalars, **extra}, step=iteration)

    def validate(self, cursor):
        scores, rows = self.validator()
        if not self.main:
            return
        self.run.log({"epoch": cursor.epoch, "iter": cursor.iteration, "val": scores})
        self.say(
            f"(epoch: {cursor.epoch}, iters: {cursor.position}) val L1: {scores['l1']:.4f} "
            f"PSNR: {scores['psnr']:.2f} dB SSIM: {scores['ssim']:.4f} ({scores['images']} images)"
        )
        grid = labelled_grid([list(row) for row in rows], GRID_LABELS[self.kind])
        self.save_grid(grid, f"samples/val_iter_{cursor.iteration:07d}.png", "val/A_fake_B", cursor.iteration)
        self.publish({f"val/{k}": scores[k] for k in ("l1", "psnr", "ssim")}, cursor.iteration)

    def note(self, line: str):
        """One line for the user, above the progress bar when there is one."""
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def samples(self, batch, fake_B, iteration):
        grid = sample_grid(batch["A"], fake_B, batch["B"], kind=self.kind)
        self.save_grid(grid, f"samples/iter_{iteration:07d}.png", "samples/A_fake_B", iteration)
        write_loss_plot(self.run.path("metrics.jsonl"), self.run.path("loss.png"), self.cfg.lambda_L1)

    def save_grid(self, grid, name: str, tag: str, iteration: int):
        atomic_write(self.run.path(name), lambda tmp: grid.save(tmp, format="PNG"))
        if self.board is not None:
            self.board.add_image(tag, np.asarray(grid), iteration, dataformats="HWC")
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Image(grid)}, step=iteration)

    def end_of_epoch(self, epoch: int, iteration: int):
        """The reference's epoch line (called after the epoch's save, which its time includes, as there), with
        the epoch's speed and the run's ETA at that speed."""
        now = time.perf_counter()
        took, done = now - self.epoch_start, iteration - self.epoch_first
        rate = done / took if took > 0 else 0.0
        eta = duration(max(self.planned - iteration, 0) / rate) if rate else "unknown"
        self.say(
            f"End of epoch {epoch} / {self.cfg.n_epochs + self.cfg.n_epochs_decay} \t Time Taken: "
            f"{int(took)} sec \t {rate:.2f} it/s \t ETA {eta}"
        )
        self.epoch_start, self.epoch_first = now, iteration

    def close(self, failing: bool):
        """Say what this session trained, close the writers and draw the final loss plot; while an error is on its
        way out, a failure here (a full disk again) is not raised over it."""
        try:
            done = self.iteration - self.session_first
            if done and not failing:
                took = time.perf_counter() - self.session_start
                self.say(
                    f"fastpix: iterations {self.session_first + 1} to {self.iteration} in {duration(took)} "
                    f"({done / max(took, 1e-9):.2f} it/s)"
                )
            if self.bar is not None:
                self.bar.close()
            if self.board is not None:
                self.board.close()
            if self.wandb is not None:
                self.wandb.finish()
            if self.main and self.run.has_log():
                write_loss_plot(self.run.path("metrics.jsonl"), self.run.path("loss.png"), self.cfg.lambda_L1)
        except Exception:
            if not failing:
                raise
