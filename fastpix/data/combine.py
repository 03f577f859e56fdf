"""Two folders of images into an aligned A|B data set: the reference's datasets/combine_A_and_B.py, with its flags
and layout, and without its silent losses.

For every split folder under fold_A (train/, val/, test/ ...), each image <fold_A>/<split>/<name> is put beside
<fold_B>/<split>/<name> (A on the left) and written to <fold_AB>/<split>/<name>, in the format its extension names
(JPEG at OpenCV's default quality 95, as the reference writes it). With use_AB, A and B are <stem>_A.<ext> and
<stem>_B.<ext> and the pair is written as <stem>.<ext>. num_imgs takes the first images of each split by name (the
reference takes them in directory order, which varies between file systems).

Where the reference skips a pair with a missing partner without a word and loses a pair of different sizes in its
process pool, every such pair is returned here by name (and `resize` makes B the size of A instead). Images are read
through fastpix's decoding facade (as every fastpix read), so EXIF orientation is not applied: OpenCV's imread in the
reference applies it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from fastpix.config import CombineConfig
from fastpix.data.decode import decode_image
from fastpix.data.image_folders import cores, is_image_name, map_images, regular_file, separate_output, write_image
from fastpix.errors import DataError, DecodeError


@dataclass
class CombineResult:
    written: dict[str, int] = field(default_factory=dict)  # split -> pairs written
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (<split>/<name>, why), sorted
    resized: int = 0  # pairs whose B was resized to A's size


@dataclass
class _Pair:
    split: str
    name_a: str
    path_a: str
    path_b: str
    path_ab: str


def _splits(fold_a: str, fold_b: str) -> list[str]:
    for flag, folder in (("--fold_A", fold_a), ("--fold_B", fold_b)):
        if not os.path.isdir(folder):
            raise DataError(f"{flag} {folder} is not a folder")
    splits = sorted(d for d in os.listdir(fold_a) if os.path.isdir(os.path.join(fold_a, d)))
    if not splits:
        raise DataError(
            f"--fold_A {fold_a} has no split folders: put the A images in {fold_a}/train/ (and val/, "
            "test/ ...), the B images of the same names in the same folders of --fold_B"
        )
    return splits


def _b_name(name_a: str, use_ab: bool) -> str:
    return name_a.replace("_A.", "_B.") if use_ab else name_a


def plan(cfg: CombineConfig) -> tuple[list[_Pair], list[tuple[str, str]]]:
    """(the pairs to combine, (<split>/<name>, why) of the images left out before reading any)."""
    pairs, left_out = [], []
    for split in _splits(cfg.fold_A, cfg.fold_B):
        folder_a, folder_b = os.path.join(cfg.fold_A, split), os.path.join(cfg.fold_B, split)
        names = sorted(n for n in os.listdir(folder_a) if is_image_name(n) and (not cfg.use_AB or "_A." in n))
        names_b = set(os.listdir(folder_b)) if os.path.isdir(folder_b) else set()
        for name in names[: cfg.num_imgs]:
            path_a, path_b = os.path.join(folder_a, name), os.path.join(folder_b, _b_name(name, cfg.use_AB))
            if not regular_file(path_a):
                left_out.append((f"{split}/{name}", f"{path_a} is not a regular file"))
            elif not regular_file(path_b):
                left_out.append((f"{split}/{name}", f"no image {path_b} (its partner in --fold_B)"))
            else:
                name_ab = name.replace("_A.", ".") if cfg.use_AB else name
                pairs.append(_Pair(split, name, path_a, path_b, os.path.join(cfg.fold_AB, split, name_ab)))
        partners = {_b_name(n, cfg.use_AB) for n in names}
        for name in sorted(names_b - partners):
            if is_image_name(name) and (not cfg.use_AB or "_B." in name):
                name_a = name.replace("_B.", "_A.") if cfg.use_AB else name
                left_out.append((f"{split}/{name}", f"only in --fold_B: no {os.path.join(folder_a, name_a)}"))
    return pairs, left_out


def _combine(pair: _Pair, resize: bool) -> tuple[str, str | None]:
    """("written" | "resized" | "left out", why) for one pair."""
    try:
        a, b = decode_image(pair.path_a), decode_image(pair.path_b)
    except DecodeError as exc:
        return "left out", f"unreadable: {exc}"
    resized = a.shape != b.shape
    if resized:
        if not resize:
            return "left out", (
                f"sizes differ: A {a.shape[1]}×{a.shape[0]}, B {b.shape[1]}×{b.shape[0]} "
                "(--resize makes B the size of A)"
            )
        b = np.asarray(Image.fromarray(b).resize((a.shape[1], a.shape[0]), Image.Resampling.BICUBIC))
    os.makedirs(os.path.dirname(pair.path_ab), exist_ok=True)
    write_image(pair.path_ab, np.concatenate([a, b], axis=1))
    return ("resized" if resized else "written"), None


def combine_folders(cfg: CombineConfig, progress: bool = True) -> CombineResult:
    """Combine fold_A and fold_B into fold_AB (see the module docstring); every pair not written is in left_out."""
    separate_output(cfg.fold_AB, "--fold_AB", {"--fold_A": cfg.fold_A, "--fold_B": cfg.fold_B})
    pairs, left_out = plan(cfg)
    workers = 1 if cfg.no_multiprocessing else cores()
    outcomes = map_images(lambda p: _combine(p, cfg.resize), pairs, workers, "combining A|B", progress)
    result = CombineResult(left_out=left_out)
    for pair, (outcome, why) in zip(pairs, outcomes):
        if outcome == "left out":
            result.left_out.append((f"{pair.split}/{pair.name_a}", why))
            continue
        result.written[pair.split] = result.written.get(pair.split, 0) + 1
        result.resized += outcome == "resized"
    result.left_out.sort()
    return result
