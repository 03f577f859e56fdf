"""The built-in demo data set: a labels→photo translation that fastpix generates itself (no downloads).

A is a label map: a few flat-coloured shapes (rectangles and ellipses) of 5 classes on a background class.
B renders each class as a "material": its own colour and a sharp square-wave stripe texture with a class-specific
frequency and orientation, whose phase is random per image and class, with dark outlines at region borders.
Because the phase is not in A, an L1-only model can only predict the average (a blur), while a conditional GAN
can draw sharp stripes: the same situation as facades, where windows and textures are not fixed by the labels.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

from fastpix.config import DemoDataConfig, user_cache_dir
from fastpix.errors import ConfigError
from fastpix.files import atomic_write_bytes
from fastpix.palette import load_palette

# A's class colours: the built-in palette "demo" (fastpix/palettes/demo.json), which the draw page paints with.
PALETTE = np.array([c.rgb for c in load_palette("demo").classes], np.uint8)
N_CLASSES = len(PALETTE)
MATERIAL_COLOUR = np.array(
    [[200, 190, 170], [180, 60, 40], [60, 150, 70], [50, 80, 170], [220, 180, 40], [120, 200, 210]], np.float32
)
STRIPE_PERIOD = np.array([6.0, 4.0, 5.0, 3.0, 8.0, 4.0])  # pixels, at size 64; scaled with the size
STRIPE_ANGLE = np.array([0.0, 0.5, 1.2, 2.0, 2.6, 0.9])  # radians

DEFAULT_SPLITS = {split: getattr(DemoDataConfig, split) for split in ("train", "val", "test")}
SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}


def make_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (A, B) pair of size×size uint8 RGB images."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    labels = np.zeros((size, size), np.int64)
    for _ in range(rng.integers(4, 10)):
        cls = rng.integers(1, N_CLASSES)
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(size * 0.1, size * 0.35, 2)
        if rng.random() < 0.5:
            inside = (np.abs(xx - cx) <= rx) & (np.abs(yy - cy) <= ry)
        else:
            inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        labels[inside] = cls
    scale = size / 64.0
    phases = rng.uniform(0, 2 * math.pi, N_CLASSES)
    period = STRIPE_PERIOD[labels] * scale
    angle = STRIPE_ANGLE[labels]
    wave = np.sin(2 * math.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phases[labels])
    shade = np.where(wave >= 0, 1.0, 0.7)[:, :, None]
    b = MATERIAL_COLOUR[labels] * shade
    border = np.zeros_like(labels, dtype=bool)
    border[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    border[1:, :] |= labels[1:, :] != labels[:-1, :]
    b[border] = 20.0
    return PALETTE[labels], np.clip(b, 0, 255).astype(np.uint8)


def write_demo_dataset(
    out: str, size: int = DemoDataConfig.size, splits: dict | None = None, seed: int = DemoDataConfig.seed
) -> str:
    """Write <out>/{train,val,test}/<index>.png in the aligned A|B format; deterministic for (size, splits, seed)."""
    splits = DEFAULT_SPLITS if splits is None else splits
    for phase, count in splits.items():
        folder = os.path.join(out, phase)
        os.makedirs(folder, exist_ok=True)
        rng = np.random.default_rng([seed, SPLIT_SEEDS.get(phase, 0)])
        for i in range(count):
            a, b = make_pair(rng, size)
            Image.fromarray(np.concatenate([a, b], axis=1)).save(os.path.join(folder, f"{i:04d}.png"))
    return out


def ensure_demo_data(size: int = DemoDataConfig.size) -> str:
    """The demo data set at `size` in the user's cache directory (what `fastpix train` uses without --dataroot),
    written on first use; a marker written last tells a complete set from one cut short."""
    folder = os.path.join(user_cache_dir(), f"demo_{size}")
    if not os.path.isfile(os.path.join(folder, "complete")):
        write_demo_dataset(folder, size)
        atomic_write_bytes(os.path.join(folder, "complete"), b"")
    return folder


def write_demo_data(cfg: DemoDataConfig) -> str:
    """`fastpix data demo`: the demo data set into cfg.out, which must be empty or new unless cfg.force (the files
    of the same names would be replaced: a data set already there would be mixed with the demo's)."""
    if os.path.isdir(cfg.out) and os.listdir(cfg.out) and not cfg.force:
        raise ConfigError(
            f"--out {cfg.out} is not empty: give a new or empty folder (or --force to write into it, "
            "replacing files of the same names)"
        )
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise ConfigError(f"--out {cfg.out} is a file, not a folder")
    return write_demo_dataset(cfg.out, cfg.size, {"train": cfg.train, "val": cfg.val, "test": cfg.test}, cfg.seed)
