"""pytorch-CycleGAN-and-pix2pix's options that fastpix has no field for in its own configs, accepted so that a
reference user's command line runs unchanged. Each says what it does in fastpix."""

from __future__ import annotations

from dataclasses import dataclass

from fastpix.config.fields import opt


@dataclass
class ReferenceConfig:
    """Options of the reference's train and test alike (its --model and --dataset_mode are ModelConfig's and
    DataConfig's: config.json records them)."""

    gpu_ids: str = opt(
        None,
        "'-1' for the CPU, '0' for cuda:0 (the first id; more GPUs: --nproc); same as "
        "--device (default: cuda if available)",
    )
    suffix: str = opt(
        "",
        "customised suffix: --name becomes <name>_<suffix>, the suffix formatted with the "
        "options, e.g. {netG}_size{load_size}",
    )
    verbose: bool = opt(False, "print the networks and their parameter counts before starting")
    pool_size: int = opt(
        0, "ignored: the image pool size; pix2pix has no pool (the reference's pix2pix ignores it too)"
    )


@dataclass
class ReferenceDisplayConfig:
    """The reference's visdom and HTML display (train; test and eval accept them too). fastpix shows a run instead
    as <run>/samples/*.png and <run>/loss.png (every --display_freq iterations), metrics.jsonl (every --print_freq)
    and TensorBoard."""

    display_id: int = opt(1, "ignored: the visdom window id")
    display_server: str = opt("http://localhost", "ignored: the visdom server")
    display_port: int = opt(8097, "ignored: the visdom port")
    display_env: str = opt("main", "ignored: the visdom environment")
    display_ncols: int = opt(4, "ignored: images per row of the visdom panel")
    display_winsize: int = opt(
        256,
        "test: the width in px of the images on the results page, as the reference's; "
        "train and eval: ignored (fastpix's sample grids are at crop_size)",
    )
    no_html: bool = opt(False, "ignored: fastpix writes no web/ folder (its samples are in <run>/samples/)")
    update_html_freq: int = opt(1000, "ignored: the web/ page cadence (samples follow --display_freq)")


@dataclass
class ReferenceTestConfig:
    """The reference's test options beyond TestConfig."""

    aspect_ratio: float = opt(
        1.0,
        "resize the saved images to height/width = aspect_ratio, as the reference does "
        "(bicubic; the scores are of the unresized images)",
    )
    batch_size: int = opt(1, "ignored: the test protocol runs one image at a time (the reference's test sets 1 too)")
    serial_batches: bool = opt(False, "accepted: test always takes the images in order")
    use_wandb: bool = opt(False, "ignored by test: the results are index.html and scores.json")
    wandb_project_name: str = opt("CycleGAN-and-pix2pix", "ignored by test (see --use_wandb)")
