"""`fastpix demo` and `fastpix data demo`: the demo data, and the scale and configs the demo trains and tests with."""

from __future__ import annotations

import os
from dataclasses import dataclass

from fastpix.config.fields import opt
from fastpix.config.run import DataConfig, ModelConfig, TestConfig, TrainConfig


@dataclass
class DemoDataConfig:
    """`fastpix data demo`; also the data `fastpix train` uses without --dataroot."""

    out: str = opt(None, "folder to write", required=True)
    size: int = opt(64, "side of each image half in pixels")
    train: int = opt(400, "training pairs")
    val: int = opt(40, "validation pairs")
    test: int = opt(40, "test pairs")
    seed: int = opt(0, "generator seed")
    force: bool = opt(False, "write into --out even if it is not empty (files of the same names are replaced)")


@dataclass
class DemoConfig:
    out: str = opt("demo_out", "folder for data, checkpoints and results")
    epochs: int = opt(5, "epochs at full learning rate, then as many decaying")
    gan_mode: str = opt(
        TrainConfig.gan_mode, "GAN objective; none = the L1-only baseline", choices=("vanilla", "lsgan", "none")
    )
    precision: str = opt(
        None,
        "training precision, as for train (default: bf16 on GPUs that support it and on "
        "CPUs with native bf16, else fp32)",
        choices=("fp32", "bf16", "fp16"),
    )
    device: str = opt(None, "torch device (default: cuda if available, else cpu): the demo's scale follows it")


# The demo's scale: the paper's unet_256 at 256² on a GPU; on a CPU a model that trains in a few minutes.
DEMO_SCALE = {
    "gpu": {"size": 256, "netG": "unet_256", "ngf": 64, "ndf": 64, "load_size": 286, "batch_size": 1},
    "cpu": {"size": 64, "netG": "unet_64", "ngf": 32, "ndf": 32, "load_size": 72, "batch_size": 4},
}


def demo_options(gpu: bool, epochs: int = DemoConfig.epochs) -> dict:
    """The options the demo trains with (fields of ModelConfig, DataConfig and TrainConfig); also what `fastpix
    train` uses without --dataroot."""
    scale = DEMO_SCALE["gpu" if gpu else "cpu"]
    return {
        "netG": scale["netG"],
        "ngf": scale["ngf"],
        "ndf": scale["ndf"],
        "load_size": scale["load_size"],
        "crop_size": scale["size"],
        "batch_size": scale["batch_size"],
        "n_epochs": epochs,
        "n_epochs_decay": epochs,
        "print_freq": 50,
        "display_freq": 200,
        "save_epoch_freq": max(1, epochs),
    }


def _fields(cls, values: dict) -> dict:
    return {k: v for k, v in values.items() if k in cls.__dataclass_fields__}


def demo_configs(cfg: DemoConfig, gpu: bool) -> tuple:
    """(ModelConfig, DataConfig, TrainConfig, TestConfig) of `fastpix demo` writing under cfg.out."""
    options = demo_options(gpu, cfg.epochs)
    model = ModelConfig(**_fields(ModelConfig, options))
    data = DataConfig(dataroot=os.path.join(cfg.out, "data"), **_fields(DataConfig, options))
    train = TrainConfig(
        name="demo",
        checkpoints_dir=os.path.join(cfg.out, "checkpoints"),
        gan_mode=cfg.gan_mode,
        precision=cfg.precision,
        device=cfg.device,
        **_fields(TrainConfig, options),
    )
    test = TestConfig(
        name="demo",
        checkpoints_dir=train.checkpoints_dir,
        results_dir=os.path.join(cfg.out, "results"),
        num_test=40,
        device=cfg.device,
    )
    return model, data, train, test
