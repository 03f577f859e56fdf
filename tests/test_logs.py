"""What a training run tells a person: the reference's loss lines without a terminal (or with --quiet), the bar on
one, epoch and resume lines, validation that leaves training untouched, the loss plot and labelled sample grids."""

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest
import torch
from PIL import Image

from fastpix import plot
from fastpix.cli import main
from fastpix.config import DataConfig, ModelConfig, TrainConfig
from fastpix.data.demo import write_demo_dataset
from fastpix.data.transforms import to_image_array
from fastpix.store.weights import load_train_state, load_weights
from fastpix.train.loop import train
from fastpix.train.progress import sample_grid

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "--netG",
    "unet_32",
    "--ngf",
    "4",
    "--ndf",
    "4",
    "--load_size",
    "36",
    "--crop_size",
    "32",
    "--precision",
    "fp32",
    "--num_threads",
    "0",
    "--batch_size",
    "2",
]
NUMBER = r"-?\d+\.\d{3}"
LOSS_LINE = re.compile(
    rf"^\(epoch: (\d+), iters: (\d+), time: {NUMBER}, data: {NUMBER}\) G_GAN: ({NUMBER}) "
    rf"G_L1: ({NUMBER}) D_real: ({NUMBER}) D_fake: ({NUMBER})$"
)
EPOCH_LINE = re.compile(r"^End of epoch (\d+) / (\d+) \t Time Taken: \d+ sec \t \d+\.\d\d it/s \t ETA \d+:\d\d:\d\d$")


def run_train(workdir, *args) -> subprocess.CompletedProcess:
    """`fastpix train` in a child process with stdout and stderr to pipes: no terminal."""
    argv = [sys.executable, "-m", "fastpix", "train", *TINY, *args]
    done = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def records(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_without_a_terminal_the_references_lines_and_no_carriage_return(tiny_data, workdir):
    # 8 pairs at batch 2: 4 iterations an epoch, 2 epochs
    done = run_train(
        workdir,
        "--dataroot",
        tiny_data,
        "--name",
        "pipe",
        "--n_epochs",
        "1",
        "--n_epochs_decay",
        "1",
        "--print_freq",
        "2",
    )
    assert "\r" not in done.stdout and "\r" not in done.stderr  # no bar, not even the cache's
    lines = done.stdout.splitlines()
    losses = [LOSS_LINE.match(line) for line in lines if line.startswith("(epoch")]
    assert all(losses) and len(losses) == 5  # iterations 1, 2, 4, 6, 8
    # iters counts the images of the epoch, as the reference's epoch_iter; the values are metrics.jsonl's
    assert [(int(m[1]), int(m[2])) for m in losses] == [(1, 2), (1, 4), (1, 8), (2, 4), (2, 8)]
    logged = records(workdir / "checkpoints" / "pipe")
    assert [r["iter"] for r in logged] == [1, 2, 4, 6, 8]
    for match, record in zip(losses, logged):
        for k, name in enumerate(("G_GAN", "G_L1", "D_real", "D_fake"), start=3):
            assert float(match[k]) == pytest.approx(record[name], abs=6e-4)
        assert {"t_comp", "t_data", "img_per_s", "data_time"} <= set(record)  # fields added, none taken away
    epochs = [EPOCH_LINE.match(line) for line in lines if line.startswith("End of epoch")]
    assert all(epochs) and [(m[1], m[2]) for m in epochs] == [("1", "2"), ("2", "2")]
    assert not any(line.startswith("fastpix: resumed") for line in lines)

    run_train(workdir, "--dataroot", tiny_data, "--name", "again", "--max_iters", "3")
    resumed = run_train(workdir, "--name", "again", "--continue_train", "--max_iters", "4", "--print_freq", "1")
    lines = resumed.stdout.splitlines()
    assert lines[0] == (
        f"fastpix: resumed {os.path.join('.', 'checkpoints', 'again')} at epoch 1, iteration 3 "
        "(6/8 images of the epoch done)"
    )
    assert [LOSS_LINE.match(line)[2] for line in lines if line.startswith("(epoch")] == ["8"]
    # iteration 4 ends epoch 1 and the run: the epoch still gets its line
    assert [EPOCH_LINE.match(line)[1] for line in lines if line.startswith("End of epoch")] == ["1"]


def on_a_terminal(workdir, *args) -> str:
    """`fastpix train` with stdout and stderr on one pseudo-terminal (40 rows, 120 columns); what it printed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    child = subprocess.Popen(
        [sys.executable, "-m", "fastpix", "train", *TINY, *args],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert child.wait(timeout=300) == 0, out.decode(errors="replace")
    return out.decode(errors="replace").replace("\r\n", "\n")  # the terminal's own newline translation


def test_quiet_on_a_terminal_prints_the_lines_and_no_bar(tiny_data, workdir):
    flags = ["--dataroot", tiny_data, "--n_epochs", "1", "--n_epochs_decay", "0", "--print_freq", "2"]
    bar = on_a_terminal(workdir, *flags, "--name", "bar")
    assert "\r" in bar and "4/4 [" in bar  # the control: on this terminal, without --quiet, a bar is drawn
    assert not re.search(r"^\(epoch: ", bar, re.MULTILINE)
    assert re.search(r"(^|\r)End of epoch 1 / 1 \t", bar, re.MULTILINE)  # said above the bar (cleared by a \r)

    quiet = on_a_terminal(workdir, *flags, "--name", "quiet", "--quiet")
    assert "\r" not in quiet and "it/s]" not in quiet
    lines = quiet.splitlines()
    assert len([line for line in lines if LOSS_LINE.match(line)]) == 3  # iterations 1, 2, 4
    assert len([line for line in lines if EPOCH_LINE.match(line)]) == 1


@pytest.fixture(scope="module")
def data64(tmp_path_factory):
    """64² pairs, for unet_64: the smallest U-Net with a dropout level, so that the masks matter."""
    return write_demo_dataset(str(tmp_path_factory.mktemp("data64")), 64, {"train": 4, "val": 3})


def configs64(data, folder, **train):
    model = ModelConfig(netG="unet_64", ngf=4, ndf=4, backend="eager")
    data_cfg = DataConfig(dataroot=data, load_size=72, crop_size=64, num_threads=0)
    return (
        model,
        data_cfg,
        TrainConfig(
            checkpoints_dir=str(folder), batch_size=2, n_epochs=3, n_epochs_decay=0, print_freq=1, seed=3, **train
        ),
    )


def test_val_freq_logs_val_and_leaves_the_weights_bit_identical(data64, tmp_path):
    plain = train(*configs64(data64, tmp_path / "plain", name="r"), progress=False)
    val = train(
        *configs64(data64, tmp_path / "val", name="r", val_freq=2, val_images=2, tensorboard=True), progress=False
    )
    for net in ("G", "D"):
        a = load_weights(os.path.join(plain, f"latest_net_{net}.safetensors"))
        b = load_weights(os.path.join(val, f"latest_net_{net}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), net  # running stats too
    a, b = (load_train_state(f"{run}/latest_train_state.pt") for run in (plain, val))
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    losses = [{k: r[k] for k in ("iter", "G_GAN", "G_L1", "D_real", "D_fake")} for r in records(val) if "val" not in r]
    assert losses == [{k: r[k] for k in ("iter", "G_GAN", "G_L1", "D_real", "D_fake")} for r in records(plain)]

    vals = [r for r in records(val) if "val" in r]
    assert [r["iter"] for r in vals] == [2, 4, 6]
    for r in vals:
        assert r["val"]["images"] == 2 and 0 < r["val"]["l1"] < 1 and 0 < r["val"]["ssim"] < 1
        assert 0 < r["val"]["psnr"] < 60
    grid = Image.open(os.path.join(val, "samples", "val_iter_0000006.png"))
    assert grid.size == (3 * 64, 2 * 64 + plot.header_height(64))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(os.path.join(val, "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in board.Scalars("val/psnr")] == [2, 4, 6]
    assert [e.value for e in board.Scalars("val/l1")] == pytest.approx([r["val"]["l1"] for r in vals], abs=1e-5)
    assert "val/A_fake_B" in board.Tags()["images"]


def test_val_scores_are_those_of_eval_under_the_test_protocol(data64, tmp_path):
    """The val record of iteration 4 equals `fastpix eval --phase val` of the weights saved at iteration 4."""
    run = train(*configs64(data64, tmp_path, name="r", max_iters=4, val_freq=4, val_images=3), progress=False)
    val = [r["val"] for r in records(run) if "val" in r]
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                run,
                "--phase",
                "val",
                "--num_test",
                "3",
                "--results_dir",
                str(tmp_path / "results"),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert "dropout on" in report["protocol"] and report["n"] == 3
    for name in ("l1", "psnr", "ssim"):
        assert val[0][name] == pytest.approx(report["metrics"][name]["mean"], abs=2e-5), name


def test_no_val_split_is_said_once_and_training_goes_on(tmp_path, capsys):
    root = write_demo_dataset(str(tmp_path / "data"), 32, {"train": 4})
    model = ModelConfig(netG="unet_32", ngf=4, ndf=4)
    data = DataConfig(dataroot=root, load_size=36, crop_size=32, num_threads=0)
    cfg = TrainConfig(
        name="r", checkpoints_dir=str(tmp_path / "ck"), max_iters=4, val_freq=1, batch_size=2, print_freq=2
    )
    run = train(model, data, cfg, progress=False)
    out = capsys.readouterr().out
    assert out.count("--val_freq 1: no validation") == 1 and "has no 'val' split" in out
    assert not [r for r in records(run) if "val" in r] and len(records(run)) == 3  # iterations 1, 2, 4 (print_freq)


def write_metrics(path, with_val=True):
    with open(path, "w") as f:
        for it in (1, 10, 20, 30):
            f.write(
                json.dumps(
                    {
                        "epoch": 1,
                        "iter": it,
                        "G_GAN": 0.7 + it / 100,
                        "G_L1": 40 - it / 2,
                        "D_real": 0.69,
                        "D_fake": 0.6 + it / 300,
                    }
                )
                + "\n"
            )
            if with_val and it > 1:
                f.write(
                    json.dumps(
                        {
                            "epoch": 1,
                            "iter": it,
                            "val": {"l1": 0.2 - it / 1000, "psnr": 13 + it / 10, "ssim": 0.1 + it / 100, "images": 8},
                        }
                    )
                    + "\n"
                )
        if with_val:
            f.write(json.dumps({"epoch": 1, "iter": 40, "val": {"l1": 0.0, "psnr": float("inf"), "ssim": 1.0}}) + "\n")
        f.write('{"epoch": 1, "it')  # torn by a kill


def test_read_metrics_separates_losses_and_val(tmp_path):
    write_metrics(tmp_path / "m.jsonl")
    series = plot.read_metrics(str(tmp_path / "m.jsonl"))
    assert series["G_L1"] == ([1, 10, 20, 30], [39.5, 35.0, 30.0, 25.0])
    assert series["val_psnr"][0] == [10, 20, 30]  # +inf (identical images) is not drawn
    assert series["val_ssim"][0] == [10, 20, 30, 40]


@pytest.mark.parametrize("with_val", [True, False])
def test_loss_plot_with_matplotlib_and_with_the_pil_fallback(tmp_path, monkeypatch, with_val):
    write_metrics(tmp_path / "m.jsonl", with_val)
    drawn = {}
    for backend in ("matplotlib", "pil"):
        path = tmp_path / f"{backend}.png"
        plot.write_loss_plot(str(tmp_path / "m.jsonl"), str(path), lambda_L1=100.0, backend=backend)
        with Image.open(path) as img:
            assert img.format == "PNG"
            img.verify()
        drawn[backend] = np.asarray(Image.open(path).convert("RGB"))
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []  # written atomically
    rows = 2
    assert drawn["matplotlib"].shape == (rows * 360, 1100, 3)
    cell_h = plot.TOP + plot.PANEL_H + plot.BOTTOM
    assert drawn["pil"].shape == (rows * cell_h + 30, 2 * (plot.LEFT + plot.PANEL_W + plot.RIGHT), 3)
    assert (drawn["pil"] == plot.GRID).all(axis=-1).sum() > 1000  # gridlines
    # the fourth panel, validation, is drawn only when there are val records (its frame's top edge)
    top_right = drawn["pil"][30 + cell_h + plot.TOP, -plot.RIGHT - plot.PANEL_W // 2]
    assert (tuple(top_right) == plot.FRAME) == with_val

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed: the PIL fallback
    plot.write_loss_plot(str(tmp_path / "m.jsonl"), str(tmp_path / "auto.png"), lambda_L1=100.0)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "auto.png").convert("RGB")), drawn["pil"])


def test_loss_panels_name_lambda_l1_and_pair_the_discriminator_losses():
    panels = plot.loss_panels(10.0, with_val=False)
    assert [key for key, _ in panels[0].left.series] == ["D_real", "D_fake"]
    assert panels[2].left.series == [("G_L1", "λ·L1 (G_L1)")] and "λ = 10" in panels[2].title
    assert all(p.left.label == "loss" for p in panels)
    val = plot.loss_panels(10.0, with_val=True)[3]
    assert val.right.label == "PSNR (dB)" and [k for k, _ in val.left.series] == ["val_l1", "val_ssim"]


@pytest.mark.parametrize("lo, hi", [(0.613, 0.872), (12.3, 41.2), (0.0, 1.0), (5.0, 5.0), (1, 60000), (-3.2, 0.4)])
def test_nice_ticks_enclose_the_range_in_round_steps(lo, hi):
    ticks = plot.nice_ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi and 3 <= len(ticks) <= 11
    steps = np.diff(ticks)
    assert np.allclose(steps, steps[0])
    mantissa = steps[0] / 10 ** np.floor(np.log10(steps[0]))
    assert min(abs(mantissa - m) for m in (1, 2, 2.5, 5)) < 1e-9


def test_sample_grid_is_at_the_training_size_under_column_labels():
    torch.manual_seed(0)
    A, fake, B = (torch.rand(3, 3, 48, 48) * 2 - 1 for _ in range(3))
    grid = sample_grid(A, fake, B)
    strip = plot.header_height(48)
    assert grid.size == (3 * 48, 3 * 48 + strip)
    pixels = np.asarray(grid)
    for row in range(3):
        for col, t in enumerate((A, fake, B)):
            cell = pixels[strip + 48 * row : strip + 48 * (row + 1), 48 * col : 48 * (col + 1)]
            assert np.array_equal(cell, to_image_array(t[row]))  # not resized
    header = pixels[:strip]
    for col in range(3):  # a label drawn in every column's header, and nothing in the gaps between labels
        assert (header[:, 48 * col + 8 : 48 * col + 40] < 128).any()
        assert (header[:, 48 * col : 48 * col + 2] == 255).all()
    assert sample_grid(A, fake, B, max_rows=2).size == (3 * 48, 2 * 48 + strip)


def test_label_size_grows_with_the_column():
    assert plot.header_height(32) < plot.header_height(256)
    img = plot.labelled_grid([[np.zeros((256, 256, 3), np.uint8)] * 3], ["A", "G(A)", "B"])
    assert img.size == (768, 256 + plot.header_height(256))


def test_a_training_run_draws_its_loss_plot_and_grids(tiny_data, tmp_path):
    model = ModelConfig(netG="unet_32", ngf=4, ndf=4)
    data = DataConfig(dataroot=tiny_data, load_size=36, crop_size=32, num_threads=0)
    cfg = TrainConfig(
        name="r", checkpoints_dir=str(tmp_path), max_iters=4, batch_size=2, print_freq=1, display_freq=2, lambda_L1=25.0
    )
    run = train(model, data, cfg, progress=False)
    assert sorted(os.listdir(os.path.join(run, "samples"))) == [f"iter_000000{i}.png" for i in (1, 2, 4)]
    assert Image.open(os.path.join(run, "samples", "iter_0000004.png")).size == (96, 2 * 32 + plot.header_height(32))
    with Image.open(os.path.join(run, "loss.png")) as img:
        assert img.format == "PNG" and img.size == (1100, 720)
