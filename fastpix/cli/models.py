"""`fastpix models`: the reference's pretrained generators."""

from __future__ import annotations

from fastpix.cli.flags import build_config, subcommand
from fastpix.config import PRETRAINED_MODELS, ModelDownloadConfig


def cmd_models_download(args):
    """Download one of the reference's pretrained pix2pix generators (unet_256, ngf 64, batch norm) to
    <checkpoints_dir>/<name>_pretrained/latest_net_G.pth, as its scripts/download_pix2pix_model.sh does. The file is
    kept only if it loads with torch.load(weights_only=True), strictly, into that architecture (a pickle that would
    run code is refused unread). Then, e.g.:
      fastpix data download facades
      fastpix test --dataroot ./datasets/facades --name facades_label2photo_pretrained --direction BtoA --model pix2pix
      fastpix predict --checkpoint checkpoints/facades_label2photo_pretrained --input labels/ --output out/
    `fastpix models list` says which data set and --direction each model expects."""
    from fastpix.pretrained import download_model

    result = download_model(build_config(ModelDownloadConfig, vars(args)))
    if result.present:
        print(f"fastpix models download: {result.path} is there already (--force downloads it again)")
    else:
        print(f"fastpix models download: {result.path} (checked: a unet_256 generator)")
    print(
        f"fastpix models download: {result.name} translates data set {result.dataset} with --direction "
        f"{result.direction}"
    )


def cmd_models_list(args):
    """The reference's pretrained generators, the data set and --direction each expects, and its test line."""
    for name, (dataset, direction) in PRETRAINED_MODELS.items():
        print(
            f"{name}: data set {dataset}, --direction {direction}\n"
            f"  fastpix models download {name} && fastpix data download {dataset}\n"
            f"  fastpix test --dataroot ./datasets/{dataset} --name {name}_pretrained --direction {direction} "
            "--phase val --model pix2pix"
        )


def register(sub):
    p = sub.add_parser(
        "models",
        help="the reference's pretrained generators: `fastpix models list`, `fastpix models download NAME`",
        allow_abbrev=False,
    )
    models_sub = p.add_subparsers(dest="models_command", required=True, metavar="WHAT")
    subcommand(
        models_sub,
        "download",
        cmd_models_download,
        "download a pretrained generator into <checkpoints_dir>/<name>_pretrained/",
        (ModelDownloadConfig, "download"),
    )
    subcommand(
        models_sub, "list", cmd_models_list, "the pretrained generators and the data set and direction each expects"
    )
