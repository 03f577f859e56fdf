"""The standard data sets and pretrained models (the reference's download scripts), and the configs of the data
commands that fetch or make data sets: download, combine, cityscapes, edges."""

from __future__ import annotations

from dataclasses import dataclass

from fastpix.config.fields import opt
from fastpix.config.run import TrainConfig

# The reference's download scripts (datasets/download_pix2pix_dataset.sh, scripts/download_pix2pix_model.sh) fetch
# <mirror>/datasets/<name>.tar.gz and <mirror>/models-pytorch/<name>.pth from this server; --mirror or
# $FASTPIX_MIRROR replaces it.
PIX2PIX_MIRROR = "http://efrosgans.eecs.berkeley.edu/pix2pix"
MIRROR_ENV = "FASTPIX_MIRROR"
# name -> what it holds, as the reference's docs/datasets.md describes it (A|B: A on the left).
PIX2PIX_DATASETS = {
    "facades": "400 training pairs, A = photo, B = label map (labels -> photo: --direction BtoA)",
    "maps": "1,096 training pairs, A = aerial photo, B = map",
    "edges2shoes": "50k training pairs, A = HED edges, B = shoe photo",
    "edges2handbags": "137k training pairs, A = HED edges, B = handbag photo",
    "night2day": "~20k pairs, A = night, B = day (day -> night: --direction BtoA)",
    "cityscapes": "not downloadable (licence): prepared from the official zips by `fastpix data cityscapes`",
}
# The reference's pretrained generators: name -> (the data set it was trained on, the --direction it expects).
# Directions as the reference's docs give them (README, docs/datasets.md: facades labels -> photo and night2day's
# day -> night are BtoA).
PRETRAINED_MODELS = {
    "facades_label2photo": ("facades", "BtoA"),
    "sat2map": ("maps", "AtoB"),
    "map2sat": ("maps", "BtoA"),
    "edges2shoes": ("edges2shoes", "AtoB"),
    "day2night": ("night2day", "BtoA"),
}
# A transfer that breaks off is resumed at once while it makes progress; one that fails without progress waits
# DOWNLOAD_BACKOFF_S, then twice that, ... (at most DOWNLOAD_BACKOFF_MAX_S) before the next of its --retries.
DOWNLOAD_BACKOFF_S = 1.0
DOWNLOAD_BACKOFF_MAX_S = 30.0


@dataclass
class DownloadConfig:
    """What every download shares: where from, and how hard to try."""

    mirror: str = opt(
        None,
        f"a server laid out as {PIX2PIX_MIRROR} (datasets/<name>.tar.gz, models-pytorch/"
        f"<name>.pth) to download from instead (default: ${MIRROR_ENV}, else that server)",
    )
    force: bool = opt(False, "download again and replace what is there (default: leave it alone)")
    retries: int = opt(
        5,
        "tries after a failed or broken-off transfer without progress (waiting 1, 2, 4 … s "
        "between them); a transfer that broke off after progress resumes at once (HTTP Range)",
    )
    read_timeout_s: float = opt(60.0, "seconds without a byte before a connection counts as broken off")


@dataclass
class DatasetDownloadConfig(DownloadConfig):
    name: str = opt(
        None,
        "the data set: " + "; ".join(f"{k}: {v}" for k, v in PIX2PIX_DATASETS.items()),
        choices=tuple(PIX2PIX_DATASETS),
        positional=True,
    )
    root: str = opt("./datasets", "the data set goes to <root>/<name>/ (train/, val/, test/ as the archive has them)")


@dataclass
class ModelDownloadConfig(DownloadConfig):
    name: str = opt(
        None,
        "the pretrained generator (unet_256, ngf 64, batch norm): "
        + "; ".join(f"{k}: data set {d}, --direction {x}" for k, (d, x) in PRETRAINED_MODELS.items()),
        choices=tuple(PRETRAINED_MODELS),
        positional=True,
    )
    checkpoints_dir: str = opt(
        TrainConfig.checkpoints_dir,
        "the generator goes to <checkpoints_dir>/<name>_pretrained"
        "/latest_net_G.pth, where `fastpix test --name <name>_pretrained` looks",
    )


@dataclass
class CombineConfig:
    """The reference's datasets/combine_A_and_B.py: <fold_A>/<split>/<name> beside <fold_B>/<split>/<name> (A on the
    left) -> <fold_AB>/<split>/<name>, for every split folder under fold_A."""

    fold_A: str = opt(None, "folder of A images, one sub-folder per split (train/, val/, test/ ...)", required=True)
    fold_B: str = opt(None, "folder of B images with the same splits and file names", required=True)
    fold_AB: str = opt(None, "output folder: <fold_AB>/<split>/<name>, A|B side by side", required=True)
    num_imgs: int = opt(1000000, "combine at most this many images per split (the first by name)")
    use_AB: bool = opt(
        False,
        "A and B in the same folders as <stem>_A.<ext> and <stem>_B.<ext> (fold_B may be "
        "fold_A): written as <stem>.<ext>",
    )
    no_multiprocessing: bool = opt(False, "one worker instead of one per core")
    resize: bool = opt(
        False, "resize B to A's size where they differ (bicubic; default: leave such a pair out and list it)"
    )


@dataclass
class CityscapesConfig:
    """The reference's datasets/prepare_cityscapes_dataset.py for pix2pix: photo (A) | colour label map (B)."""

    gtFine: str = opt(
        None,
        "the unzipped gtFine_trainvaltest.zip's gtFine/ folder (train/, val/ of <city>/*_gtFine_color.png)",
        required=True,
        aliases=("--gtFine_dir",),
    )
    leftImg8bit: str = opt(
        None,
        "the unzipped leftImg8bit_trainvaltest.zip's leftImg8bit/ folder (train/, val/ of <city>/*_leftImg8bit.png)",
        required=True,
        aliases=("--leftImg8bit_dir",),
    )
    out: str = opt(
        None,
        "output folder: train/ (2,975 pairs) and test/ (cityscapes' 500 val pairs), <i>.jpg",
        required=True,
        aliases=("--output_dir",),
    )
    size: int = opt(256, "side of each half in pixels (the reference: 256)")


@dataclass
class EdgesConfig:
    """An edges -> photo data set from photos: A = black edges on white, B = the photo, both size x size."""

    input: str = opt(
        None, "folder of photos (searched recursively; sub-folders such as train/ and test/ are kept)", required=True
    )
    out: str = opt(None, "output folder: <out>/<sub-folder>/<stem>.png, edges | photo side by side", required=True)
    size: int = opt(256, "side of each half in pixels (photos are resized to size x size, aspect not kept)")
    hed: str = opt(
        None,
        "a HED network as TorchScript (float N×3×H×W RGB in [0, 1] -> edge probability N×1×H×W in "
        "[0, 1]; never downloaded) instead of the built-in detector (`pydoc fastpix.data.edges` shows how "
        "to export one)",
    )
    threshold: float = opt(25 / 255, "edge strength kept after non-maximum suppression (the reference: 25/255)")
    small_edge: int = opt(5, "edges of fewer pixels than this are removed (the reference: 5)")
    device: str = opt(None, "torch device for --hed (default: cuda if available, else cpu)")
