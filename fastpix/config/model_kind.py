"""The checks across a ModelConfig and a DataConfig, said in one line before any work: the U-Net's crop multiple, and
which model kind (pix2pix or colorization) the options make, with what colorization needs."""

from __future__ import annotations

from fastpix.config.run import DataConfig, ModelConfig
from fastpix.errors import ConfigError


def check_crop(model_cfg: ModelConfig, data_cfg: DataConfig):
    """A U-Net halves its input num_downs times (unet_<N>: log2 N), so a fixed crop must be a multiple of N:
    otherwise the first forward fails, after the cache was built. Said first, in one line."""
    if not model_cfg.netG.startswith("unet_") or data_cfg.preprocess not in ("resize_and_crop", "crop"):
        return
    multiple = int(model_cfg.netG.removeprefix("unet_"))
    if data_cfg.crop_size % multiple:
        raise ConfigError(
            f"--netG {model_cfg.netG} takes images whose sides are multiples of {multiple}: "
            f"--crop_size {data_cfg.crop_size} is not (or use a smaller U-Net)"
        )


# Colorization's model and data set (each implies the other, as in the reference) and what they need: the
# reference's colorization data set sets, and asserts, input_nc 1, output_nc 2, AtoB.
COLORIZATION = {"model": "colorization", "dataset_mode": "colorization"}
COLORIZATION_NEEDS = {"input_nc": 1, "output_nc": 2, "direction": "AtoB"}


def model_kind(*layers: dict) -> str:
    """ "colorization" or "pix2pix", from layers of option values (the later override the earlier, as build_config
    takes them; dataclasses as vars()): colorization when --model or --dataset_mode says so; where no layer names
    either, when the generator takes 1 channel and gives 2 (L → ab: a reference colorization .pth tells nothing
    else), as no other data has 2-channel targets."""
    merged = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if v is not None})
    if "colorization" in (merged.get("model"), merged.get("dataset_mode")):
        return "colorization"
    if "model" in merged or "dataset_mode" in merged:
        return "pix2pix"
    return "colorization" if (merged.get("input_nc"), merged.get("output_nc")) == (1, 2) else "pix2pix"


def kind_layers(*layers: dict) -> tuple[dict, dict]:
    """(beneath, above): the layers the model kind of `layers` puts below them (colorization's channels and
    direction, which flags may still set, and check_model then refuses) and above them (its model and data set,
    both named, so that config.json records them); empty for pix2pix."""
    if model_kind(*layers) != "colorization":
        return {}, {}
    return {**COLORIZATION_NEEDS, **COLORIZATION}, dict(COLORIZATION)


def check_model(model_cfg: ModelConfig, data_cfg: DataConfig):
    """Colorization's options hold together (1 → 2 channels, AtoB), said in one line before any work; a model or
    data set that translates single images is `fastpix predict`'s."""
    if model_cfg.model == "test" or data_cfg.dataset_mode == "single":
        raise ConfigError("--model test / --dataset_mode single translate images without targets: use fastpix predict")
    if model_kind(vars(model_cfg), vars(data_cfg)) != "colorization":
        if model_cfg.output_nc == 2:
            raise ConfigError(
                "--output_nc 2: only colorization's targets (ab) have 2 channels; give --model "
                "colorization, or --output_nc 1 or 3"
            )
        return
    values = {**vars(model_cfg), **vars(data_cfg)}
    wrong = [f"--{k} {values[k]}" for k, v in COLORIZATION_NEEDS.items() if values[k] != v]
    if wrong:
        raise ConfigError(
            f"colorization translates L (1 channel) to ab (2 channels), AtoB: {', '.join(wrong)} do "
            f"not fit (leave them out: it sets "
            f"{' '.join(f'--{k} {v}' for k, v in COLORIZATION_NEEDS.items())})"
        )
