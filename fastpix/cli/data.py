"""`fastpix data`: the reference's data sets (download, cityscapes), your own pairs (combine, edges), the demo set."""

from __future__ import annotations

import sys

from fastpix.cli.flags import build_config, subcommand
from fastpix.config import (
    PIX2PIX_DATASETS,
    CityscapesConfig,
    CombineConfig,
    DatasetDownloadConfig,
    DemoDataConfig,
    EdgesConfig,
)


def cmd_data_demo(args):
    """Write the built-in demo data set: aligned A|B pairs in train/, val/ and test/ (no download). The folder must
    be new or empty (--force writes into it, replacing files of the same names)."""
    from fastpix.data.demo import write_demo_data

    cfg = build_config(DemoDataConfig, vars(args))
    write_demo_data(cfg)
    print(f"fastpix data: demo data set written to {cfg.out} (train {cfg.train}, val {cfg.val}, test {cfg.test})")


def cmd_data_download(args):
    """Download one of the reference's pix2pix data sets to <root>/<name>/ (its train/, val/, test/ splits of A|B
    images), as its datasets/download_pix2pix_dataset.sh does: <mirror>/datasets/<name>.tar.gz, resumed after a
    dropped connection, extracted safely, then removed. An archive already at <root>/<name>.tar.gz (downloaded by
    hand) is used as it is. A data set already there is left alone unless --force."""
    from fastpix.data.standard import download_dataset

    result = download_dataset(build_config(DatasetDownloadConfig, vars(args)))
    if result.present:
        print(f"fastpix data download: {result.folder} is there already (--force downloads it again)")
    else:
        print(f"fastpix data download: {result.files:,} files in {result.folder}: {PIX2PIX_DATASETS[result.name]}")


def cmd_data_combine(args):
    """The reference's datasets/combine_A_and_B.py: for every split folder under --fold_A (train/, val/, test/ ...),
    each image <fold_A>/<split>/<name> beside <fold_B>/<split>/<name> (A on the left), written to
    <fold_AB>/<split>/<name>, on every core. A pair with a missing partner, an unreadable image or different sizes
    (unless --resize) is left out and listed by name at the end, and the exit status is then 1."""
    from fastpix.data.combine import combine_folders

    cfg = build_config(CombineConfig, vars(args))
    result = combine_folders(cfg)
    splits = ", ".join(f"{split} {n}" for split, n in result.written.items())
    print(
        f"fastpix data combine: {sum(result.written.values())} pairs written to {cfg.fold_AB}"
        + (f" ({splits})" if splits else "")
        + (f"; B resized to A's size in {result.resized}" if result.resized else "")
    )
    if not result.left_out:
        return 0
    print(f"fastpix data combine: {len(result.left_out)} left out:", file=sys.stderr)
    for name, why in result.left_out:
        print(f"  {name}: {why}", file=sys.stderr)
    return 1


def cmd_data_cityscapes(args):
    """The reference's datasets/prepare_cityscapes_dataset.py: from the official gtFine_trainvaltest.zip and
    leftImg8bit_trainvaltest.zip (https://www.cityscapes-dataset.com, unzipped), each photo and its colour label map
    resized to --size² (256) and side by side, photo on the left (A): <out>/train/<i>.jpg and <out>/test/<i>.jpg
    (cityscapes' val). Labels -> photo trains with --direction BtoA."""
    from fastpix.data.cityscapes import prepare_cityscapes

    cfg = build_config(CityscapesConfig, vars(args))
    result = prepare_cityscapes(cfg)
    counts = ", ".join(f"{split} {n}" for split, n in result.written.items())
    print(
        f"fastpix data cityscapes: {cfg.out}: {counts} pairs (A = photo, B = labels: labels -> photo is "
        "--direction BtoA)"
    )


def cmd_data_edges(args):
    """An edges -> photo data set from photos, as the reference made edges2shoes: A = black edges on white, B = the
    photo, both --size², side by side in <out>/<sub-folder>/<stem>.png (sub-folders such as train/ and test/ kept).
    The edges are post-processed as the reference's PostprocessHED.m does (non-maximum suppression, threshold
    25/255, thinning, removal of edges under 5 px, inverted). The built-in detector (pip install 'fastpix[edges]') is
    scikit-image's Sobel gradient of the smoothed photo: it marks every strong change of brightness, texture and
    shadows included, and misses outlines between regions of similar brightness, where the reference's HED draws the
    sparse outlines a person would. With --hed FILE.pt, HED itself runs (your TorchScript export: float N×3×H×W RGB
    in [0, 1] -> edge probability N×1×H×W; nothing is downloaded; `pydoc fastpix.data.edges` shows how to export
    sniklaus/pytorch-hed's). Unreadable photos are listed and skipped (exit status 1)."""
    from fastpix.data.edges import make_edges_dataset

    cfg = build_config(EdgesConfig, vars(args))
    result = make_edges_dataset(cfg)
    for _, why in result.unreadable:
        print(f"fastpix data edges: skipped {why}", file=sys.stderr)
    print(f"fastpix data edges: {result.written} edges|photo pairs in {cfg.out} (edges -> photo is --direction AtoB)")
    return 1 if result.unreadable else 0


def register(sub):
    p = sub.add_parser(
        "data",
        help="data sets: download the reference's, combine two folders, make edges, "
        "prepare cityscapes, write the built-in demo set",
        allow_abbrev=False,
    )
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="WHAT")
    subcommand(
        data_sub,
        "demo",
        cmd_data_demo,
        "write the built-in demo data set (aligned A|B, train/val/test)",
        (DemoDataConfig, "demo data"),
    )
    subcommand(
        data_sub,
        "download",
        cmd_data_download,
        "download a pix2pix data set: facades, maps, edges2shoes, edges2handbags, night2day",
        (DatasetDownloadConfig, "download"),
    )
    subcommand(
        data_sub,
        "combine",
        cmd_data_combine,
        "put two folders of images side by side as an aligned A|B data set (the reference's combine_A_and_B.py)",
        (CombineConfig, "combine"),
    )
    subcommand(
        data_sub,
        "cityscapes",
        cmd_data_cityscapes,
        "prepare cityscapes from the official zips (the reference's prepare_cityscapes_dataset.py)",
        (CityscapesConfig, "cityscapes"),
    )
    subcommand(
        data_sub,
        "edges",
        cmd_data_edges,
        "make an edges -> photo data set from photos (the reference's HED "
        "post-processing on a built-in detector, or on your HED)",
        (EdgesConfig, "edges"),
    )
