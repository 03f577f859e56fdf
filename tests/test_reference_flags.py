"""A reference user's command lines, with every flag of the reference's train and test options, run unchanged.

The flags are those of pytorch-CycleGAN-and-pix2pix's options/{base,train,test}_options.py and of its pix2pix
model (--lambda_L1), each with a value a tiny run can use.
"""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from fastpix.cli import build_parser, main
from fastpix.results import aspect_resized, save_png

pytestmark = pytest.mark.usefixtures("one_thread")

# base_options.py, less --dataroot/--name/--checkpoints_dir (set per test); None: a switch without a value
BASE = {
    "gpu_ids": "-1",
    "model": "pix2pix",
    "input_nc": "3",
    "output_nc": "3",
    "ngf": "4",
    "ndf": "4",
    "netD": "basic",
    "netG": "unet_32",
    "n_layers_D": "3",
    "norm": "batch",
    "init_type": "normal",
    "init_gain": "0.02",
    "no_dropout": None,
    "dataset_mode": "aligned",
    "direction": "AtoB",
    "serial_batches": None,
    "num_threads": "0",
    "batch_size": "2",
    "load_size": "36",
    "crop_size": "32",
    "max_dataset_size": "8",
    "preprocess": "resize_and_crop",
    "no_flip": None,
    "display_winsize": "256",
    "epoch": "latest",
    "load_iter": "0",
    "verbose": None,
    "suffix": "{netG}",
    "use_wandb": None,
    "wandb_project_name": "fastpix-test",
}
TRAIN = {
    "display_freq": "1",
    "display_ncols": "4",
    "display_id": "0",
    "display_server": "http://localhost",
    "display_env": "main",
    "display_port": "8097",
    "update_html_freq": "1000",
    "print_freq": "1",
    "no_html": None,
    "save_latest_freq": "5000",
    "save_epoch_freq": "1",
    "save_by_iter": None,
    "epoch_count": "1",
    "phase": "val",
    "n_epochs": "1",
    "n_epochs_decay": "0",
    "beta1": "0.5",
    "lr": "0.0002",
    "gan_mode": "vanilla",
    "pool_size": "0",
    "lr_policy": "linear",
    "lr_decay_iters": "50",
    "lambda_L1": "100",
}
TEST = {"results_dir": None, "aspect_ratio": "2.0", "phase": "test", "eval": None, "num_test": "2"}


def command_line(flags: dict, **values) -> list[str]:
    argv = []
    for name, value in {**flags, **values}.items():
        argv += [f"--{name}"] + ([] if value is None else [str(value)])
    return argv


@pytest.mark.parametrize(
    "command, name",
    [("train", n) for n in {**BASE, **TRAIN, "continue_train": None}] + [("test", n) for n in {**BASE, **TEST}],
)
def test_every_reference_flag_is_accepted(command, name):
    value = {**BASE, **TRAIN, **TEST, "continue_train": None, "results_dir": "r"}[name]
    args = build_parser().parse_args([command, *command_line({name: value})])
    assert name in vars(args)


def test_abbreviations_are_refused(capsys):
    """argparse would take --epoch for --epoch_count, --batch for --batch_size: a misspelt flag must fail."""
    for flag in ("--epoch_c", "--batch", "--n_epochs_d", "--display_p"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", flag, "1"])
        assert f"unrecognized arguments: {flag}" in capsys.readouterr().err


def test_flag_values_below_their_minimum_are_refused(capsys):
    for flag in ("--batch_size", "--print_freq", "--ngf", "--save_latest_freq"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", flag, "0"])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert flag.replace("_", "-") in err and "0 is below the smallest value it takes, 1" in err


def test_reference_train_and_test_command_lines_run(tiny_data, workdir, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # --use_wandb, where wandb is installed: nothing leaves the machine
    ckpts, results = workdir / "ckpt", workdir / "res"
    train = [
        "train",
        "--dataroot",
        tiny_data,
        "--name",
        "ref",
        "--checkpoints_dir",
        str(ckpts),
        "--quiet",
        *command_line({**BASE, **TRAIN}),
    ]
    assert main(train) == 0
    out = capsys.readouterr().out
    run = ckpts / "ref_unet_32"  # --suffix {netG}
    assert out.count("--display_id") == 1 and "<run>/samples/" in out  # one line says what fastpix shows instead
    assert "[Network G] Total number of parameters : " in out and "[Network D]" in out  # --verbose
    assert json.loads((run / "config.json").read_text())["train"]["phase"] == "val"
    # --phase val: 3 pairs at batch 2 are 2 iterations an epoch (the train split's 8 would be 4)
    iterations = [json.loads(line)["iter"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert iterations == [1, 2]
    assert main([*train, "--continue_train", "--n_epochs", "2"]) == 0
    assert [json.loads(line)["iter"] for line in (run / "metrics.jsonl").read_text().splitlines()][-1] == 4

    test = [
        "test",
        "--dataroot",
        tiny_data,
        "--name",
        "ref",
        "--checkpoints_dir",
        str(ckpts),
        *command_line({**BASE, **TEST}, results_dir=results),
    ]
    assert main(test) == 0
    images = results / "ref_unet_32" / "test_latest" / "images"
    assert len(os.listdir(images)) == 6
    assert Image.open(images / "0000_fake_B.png").size == (32, 64)  # --aspect_ratio 2: twice as high as wide
    assert "[Network G] Total number of parameters : " in capsys.readouterr().out

    # --load_iter N loads iter_<N>_net_G into <phase>_<epoch>_iter<N>, as the reference
    shutil.copy(run / "latest_net_G.safetensors", run / "iter_7_net_G.safetensors")
    assert main([*test, "--load_iter", "7"]) == 0
    assert (results / "ref_unet_32" / "test_latest_iter7" / "index.html").is_file()
    assert main([*test, "--load_iter", "9"]) == 2
    assert "no iter_9_net_G.safetensors or iter_9_net_G.pth" in capsys.readouterr().err


def test_suffix_naming_no_option_is_one_line(tiny_data, workdir, capsys):
    assert main(["test", "--dataroot", tiny_data, "--name", "x", "--suffix", "{nope}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "fastpix test: error: --suffix '{nope}': 'nope' is not an option of this command (write e.g. "
        "{netG}_size{load_size})"
    )


def test_aspect_ratio_resizes_as_the_reference(tmp_path):
    """util.save_image: ratio > 1 → (width h, height int(w·ratio)); < 1 → (width int(h/ratio), height w)."""
    for ratio, size in ((2.0, (30, 40)), (0.5, (60, 20)), (1.5, (30, 30))):
        assert aspect_resized(Image.new("RGB", (20, 30), (200, 10, 10)), ratio).size == size  # width 20, height 30
    array = np.full((30, 20, 3), 200, np.uint8)
    for ratio, size in ((2.0, (30, 40)), (1.0, (20, 30))):  # as saved: ratio 1 leaves the image as it is
        save_png(array, tmp_path / "a.png", ratio)
        assert Image.open(tmp_path / "a.png").size == size


def test_single_image_runs_point_to_predict(workdir, capsys):
    """The reference's pretrained-model line (--model test --dataset_mode single) is `fastpix predict`'s job."""
    for flags in (["--model", "test"], ["--dataset_mode", "single"]):
        assert main(["test", "--dataroot", str(workdir), "--name", "pretrained", *flags]) == 2
        assert capsys.readouterr().err == (
            f"fastpix test: error: {' '.join(flags)} translates images without "
            "targets: use fastpix predict --checkpoint <checkpoints_dir>/<name> "
            "--input <images> --output <folder>\n"
        )


@pytest.mark.parametrize("command", ["train", "test", "eval"])
def test_reference_flags_fastpix_took_before_still_parse(command):
    argv = [
        "--model",
        "pix2pix",
        "--dataset_mode",
        "aligned",
        "--gpu_ids",
        "-1",
        "--display_id",
        "0",
        "--pool_size",
        "0",
        "--suffix",
        "x",
        "--verbose",
    ]
    assert vars(build_parser().parse_args([command, *argv]))["display_id"] == 0


def test_pre_2020_epoch_flags_are_aliases():
    """The reference's --niter/--niter_decay (renamed --n_epochs/--n_epochs_decay in 2020), and its other policies and
    GAN modes."""
    args = build_parser().parse_args(
        ["train", "--niter", "3", "--niter_decay", "4", "--lr_policy", "plateau", "--gan_mode", "wgangp"]
    )
    assert (args.n_epochs, args.n_epochs_decay, args.lr_policy, args.gan_mode) == (3, 4, "plateau", "wgangp")


def test_display_winsize_sets_the_results_page_image_width(tiny_data, workdir):
    from fastpix.models import define_G
    from fastpix.store.weights import save_weights

    os.makedirs(workdir / "ckpt" / "w")
    save_weights(
        str(workdir / "ckpt" / "w" / "latest_net_G.safetensors"),
        define_G(3, 3, 4, "unet_32", "batch", True, backend="eager"),
    )
    test = [
        "test",
        "--dataroot",
        tiny_data,
        "--name",
        "w",
        "--checkpoints_dir",
        str(workdir / "ckpt"),
        "--netG",
        "unet_32",
        "--ngf",
        "4",
        "--load_size",
        "32",
        "--crop_size",
        "32",
        "--num_test",
        "1",
        "--results_dir",
        str(workdir / "res"),
    ]
    page = workdir / "res" / "w" / "test_latest" / "index.html"
    for flags, width in (([], 256), (["--display_winsize", "128"], 128)):
        assert main([*test, *flags]) == 0
        assert page.read_text().count(f"style='width:{width}px'") == 3  # input, output, target
