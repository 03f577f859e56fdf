"""Cityscapes for pix2pix from the official zips, as the reference's datasets/prepare_cityscapes_dataset.py makes it
(the data set's licence forbids handing it out ready-made).

gtFine_trainvaltest.zip holds gtFine/{train,val}/<city>/<id>_gtFine_color.png (the label colours) and
leftImg8bit_trainvaltest.zip leftImg8bit/{train,val}/<city>/<id>_leftImg8bit.png (the photos). Each photo and its
label map are resized to size×size (bicubic, as PIL's resize without a filter is), put side by side — photo on the
left (A), labels on the right (B), so labels -> photo trains with --direction BtoA — and written as
<out>/<split>/<i>.jpg (JPEG quality 100 without chroma subsampling; i counts the pairs sorted by path). Cityscapes'
val becomes test/, its train train/, as in the reference. The reference also writes trainA/, trainB/ ... copies
for CycleGAN; pix2pix does not read them, so they are not written.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from PIL import Image

from fastpix.config import CityscapesConfig
from fastpix.data.decode import decode_image
from fastpix.data.image_folders import cores, map_images, write_image
from fastpix.errors import DataError

SPLITS = {"val": "test", "train": "train"}  # cityscapes' split -> the folder written
LABELS, PHOTOS = "_gtFine_color.png", "_leftImg8bit.png"


@dataclass
class CityscapesResult:
    written: dict[str, int] = field(default_factory=dict)  # folder written (train, test) -> pairs


def _by_id(folder: str, flag: str, suffix: str) -> dict[str, str]:
    """<id> -> path of <folder>/<city>/<id><suffix>."""
    if not os.path.isdir(folder):
        raise DataError(f"{flag}: no folder {folder} (give the unzipped zip's top folder, which holds train/ and val/)")
    found = sorted(glob.glob(os.path.join(glob.escape(folder), "*", f"*{suffix}")))
    return {os.path.basename(p)[: -len(suffix)]: p for p in found}


def pairs_of_split(cfg: CityscapesConfig, split: str) -> list[tuple[str, str]]:
    """(photo, label map) of one cityscapes split, sorted by id; a DataError naming what does not match."""
    labels = _by_id(os.path.join(cfg.gtFine, split), "--gtFine", LABELS)
    photos = _by_id(os.path.join(cfg.leftImg8bit, split), "--leftImg8bit", PHOTOS)
    unmatched = sorted(set(labels) ^ set(photos))
    if unmatched:
        first = unmatched[0]
        where = (
            f"{labels[first]} has no {first}{PHOTOS}" if first in labels else f"{photos[first]} has no {first}{LABELS}"
        )
        raise DataError(
            f"{split}: {len(labels)} label maps and {len(photos)} photos, {len(unmatched)} without a "
            f"partner: {where} (are --gtFine and --leftImg8bit from the same release?)"
        )
    if not labels:
        raise DataError(f"{split}: no <city>/*{LABELS} in {os.path.join(cfg.gtFine, split)}")
    return [(photos[k], labels[k]) for k in sorted(labels)]


def _side_by_side(photo: str, labels: str, size: int) -> np.ndarray:
    halves = [Image.fromarray(decode_image(p)).resize((size, size), Image.Resampling.BICUBIC) for p in (photo, labels)]
    return np.concatenate([np.asarray(h) for h in halves], axis=1)


def prepare_cityscapes(cfg: CityscapesConfig, progress: bool = True) -> CityscapesResult:
    """<out>/test/ and <out>/train/ from the official folders (see the module docstring)."""
    result = CityscapesResult()
    for split, written in SPLITS.items():
        pairs = pairs_of_split(cfg, split)
        folder = os.path.join(cfg.out, written)
        os.makedirs(folder, exist_ok=True)

        write = partial(_write_pair, folder, cfg.size)
        map_images(write, list(enumerate(pairs)), cores(), f"cityscapes {split} -> {written}", progress)
        result.written[written] = len(pairs)
    return result


def _write_pair(folder: str, size: int, item):
    i, (photo, labels) = item
    write_image(os.path.join(folder, f"{i}.jpg"), _side_by_side(photo, labels, size), quality=100, subsampling=0)
