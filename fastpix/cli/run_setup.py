"""The set-up `fastpix train`, `test` and `eval` share: the reference's spellings resolved (--gpu_ids), its
single-image modes pointed to `predict`, --suffix applied to --name, the model and data configuration layered
(defaults, then what the run recorded or its weights tell, then the flags given), the crop checked against the
U-Net, --verbose's network printout, and the backend prepared. Each command then calls one function below the CLI.
"""

from __future__ import annotations

import argparse
import dataclasses

from fastpix.cli.console import is_main_process, note
from fastpix.cli.flags import build_config
from fastpix.config import (
    DataConfig,
    ModelConfig,
    ReferenceConfig,
    TestConfig,
    TrainConfig,
    check_crop,
    check_model,
    kind_layers,
)
from fastpix.errors import ConfigError


def reference_args(given: dict, args) -> dict:
    """The flags given, with the reference's --gpu_ids as --device."""
    gpu_ids = given.get("gpu_ids")
    if gpu_ids is not None and "device" not in given:
        ids = [i.strip() for i in str(gpu_ids).split(",") if i.strip()]
        given["device"] = "cpu" if not ids or ids[0] == "-1" else f"cuda:{ids[0]}"
        if len(ids) > 1:
            note(
                args,
                f"--gpu_ids {gpu_ids}: fastpix runs on cuda:{ids[0]}; for {len(ids)} GPUs, one process "
                f"each, use --nproc {len(ids)} (with CUDA_VISIBLE_DEVICES={gpu_ids} to choose them)",
            )
    return given


def refuse_single_images(given: dict):
    """The reference's --model test / --dataset_mode single translate images that have no target: `fastpix
    predict` does that (any size, the paper's per-image statistics by default)."""
    if given.get("model") == "test" or given.get("dataset_mode") == "single":
        flag = "--model test" if given.get("model") == "test" else "--dataset_mode single"
        raise ConfigError(
            f"{flag} translates images without targets: use fastpix predict --checkpoint "
            "<checkpoints_dir>/<name> --input <images> --output <folder>"
        )


def suffixed_name(name: str, suffix: str, *configs) -> str:
    """The reference's --suffix: <name>_<suffix formatted with the options>."""
    if not suffix:
        return name
    values = {k: v for cfg in configs for k, v in dataclasses.asdict(cfg).items()}
    try:
        return f"{name}_{suffix.format(**values)}"
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"--suffix {suffix!r}: {exc} is not an option of this command (write e.g. {{netG}}_size{{load_size}})"
        ) from exc


def print_networks(model_cfg, nets):
    """--verbose: each network and its parameter count, as the reference prints them (built on the meta device:
    no memory, no time)."""
    import torch

    from fastpix.models import build_models

    with torch.device("meta"):
        built = dict(zip(("G", "D"), build_models(model_cfg, backend="eager")))
    print("---------- Networks initialized -------------")
    for name in nets:
        print(built[name])
        count = sum(p.numel() for p in built[name].parameters())
        print(f"[Network {name}] Total number of parameters : {count / 1e6:.3f} M")
    print("-----------------------------------------------")


def prepare_backend(args, backend, device):
    """--backend triton without a CUDA device: switch Triton to its interpreter before the kernels load, and say so."""
    from fastpix.runtime import default_device

    if backend == "triton" and default_device(device).type != "cuda":
        from fastpix.runtime import use_triton_interpreter

        use_triton_interpreter()
        note(
            args,
            "--backend triton without a CUDA device runs the kernels in Triton's interpreter "
            "(TRITON_INTERPRET=1): correct but very slow, for checking; --backend eager is the CPU path",
        )


@dataclasses.dataclass
class RunSetup:
    """The start every run command shares: `cfg` is the command's own configuration (TrainConfig, TestConfig,
    EvalConfig) with --name suffixed, `given` the flags given."""

    args: argparse.Namespace
    given: dict
    cfg: TrainConfig | TestConfig  # EvalConfig is a TestConfig
    ref: ReferenceConfig

    @classmethod
    def start(cls, args, config_cls, *more_configs) -> RunSetup:
        given = reference_args(vars(args), args)
        cfg, ref = build_config(config_cls, given), build_config(ReferenceConfig, given)
        refuse_single_images(given)
        others = [build_config(c, given) for c in (ModelConfig, DataConfig, *more_configs)]
        cfg.name = suffixed_name(cfg.name, ref.suffix, cfg, ref, *others)
        return cls(args, given, cfg, ref)

    def configs(self, *recorded: dict) -> tuple[ModelConfig, DataConfig]:
        """The model and data configuration: defaults, then what the model kind implies (colorization's channels),
        then each layer of `recorded`, then the flags given, then the model kind's model and data set."""
        layers = (*recorded, self.given)
        beneath, above = kind_layers(*layers)
        if above and self.given.get("dataset_mode") == "aligned":
            raise ConfigError(
                "--dataset_mode aligned: a colorization model (--model colorization, or the run's "
                "config.json) reads single RGB images: --dataset_mode colorization"
            )
        return (build_config(ModelConfig, beneath, *layers, above), build_config(DataConfig, beneath, *layers, above))

    def ready(self, model_cfg, data_cfg, nets=("G", "D")):
        """The last checks before any work: the model kind's options agree; the crop fits the U-Net; --verbose's
        networks; the backend."""
        check_model(model_cfg, data_cfg)
        check_crop(model_cfg, data_cfg)
        if self.ref.verbose and is_main_process():
            print_networks(model_cfg, nets)
        prepare_backend(self.args, model_cfg.backend, self.given.get("device"))

    def checkpoint_configs(self, source, phase: str, data_required: bool) -> tuple[ModelConfig, DataConfig]:
        """test/eval: the configuration recorded with the checkpoint (its config.json; else the architecture its
        weights tell), then the flags; crop_size from the run, else from the images of the split, never a silent
        resize to a default."""
        recorded = source.config or source.architecture()
        model_cfg, data_cfg = self.configs(recorded)
        if data_cfg.dataroot is None and data_required:
            raise ConfigError(f"--dataroot is required (no config.json in {source.run_dir} names one)")
        if data_cfg.dataroot is not None and data_cfg.preprocess != "none":
            settle_crop(self.args, self.given, recorded, data_cfg, phase)
        return model_cfg, data_cfg


def settle_crop(args, given: dict, recorded: dict, data_cfg, phase: str):
    """The size test/eval resize images to (crop_size): the flag, else the run's, else the images'. Said when it
    is not what the run or the images have."""
    from fastpix.data.dataset import split_image_size
    from fastpix.errors import DataError

    if "crop_size" not in given and "crop_size" in recorded:
        return
    if "crop_size" in given and "crop_size" in recorded:
        if data_cfg.crop_size != recorded["crop_size"]:
            note(
                args,
                f"--crop_size {data_cfg.crop_size}: the run was trained at {recorded['crop_size']} "
                f"(config.json); images are resized to {data_cfg.crop_size}²",
            )
        return
    try:
        height, width = split_image_size(data_cfg.dataroot, phase, single=data_cfg.dataset_mode == "colorization")
    except DataError:  # no such split, or no image in it: reading the data set says so, after the generator is built
        return
    side = min(height, width)
    if "crop_size" in given:
        if (height, width) != (data_cfg.crop_size,) * 2:
            note(
                args,
                f"--crop_size {data_cfg.crop_size}: the images of {phase} are {width}×{height}; they are "
                f"resized to {data_cfg.crop_size}²",
            )
        return
    data_cfg.crop_size = data_cfg.load_size = side
    note(
        args,
        f"crop_size {side}, the size of the images of {phase} ({width}×{height}), as no config.json "
        "records the run's (--crop_size sets another)",
    )
