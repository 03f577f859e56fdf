"""Folders of images in and out, for the tools that make data sets (combine, cityscapes, edges): listing a folder's
images, writing one image whole or not at all, and running one function per image on every core with a progress bar.

Threads rather than processes: decoding, resizing and encoding (the C++ decoder, PIL, NumPy, scikit-image) release
the GIL for the work that matters, an error comes back as a value and is never lost in a worker, and nothing is
pickled or re-imported per worker.
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from fastpix.data.dataset import IMG_EXTENSIONS
from fastpix.errors import ConfigError
from fastpix.files import atomic_write
from fastpix.progress import Progress

# PIL's save options per extension: JPEG as OpenCV writes it by default (quality 95), which the reference's
# combine_A_and_B.py uses; the other formats at PIL's defaults.
JPEG_QUALITY = 95


def cores() -> int:
    """The cores this process may use (containers, taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def regular_file(path: str) -> bool:
    """True for a regular file (or a link to one): a FIFO, socket or device named like an image is not read."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def separate_output(out: str, out_flag: str, inputs: dict[str, str]):
    """Refuse an output folder that is one of the inputs or inside one (flag -> folder): written there, the pairs
    would replace the images they are made of, or be read as input by the next run."""
    target = os.path.realpath(out)
    for flag, folder in inputs.items():
        source = os.path.realpath(folder)
        if target == source or target.startswith(source + os.sep):
            raise ConfigError(f"{out_flag} {out} is inside {flag} {folder}: give an output folder of its own")


def write_image(path: str, pixels: np.ndarray, **options):
    """An H×W×3 (or H×W) uint8 image to path, in the format its extension names, whole or not at all (a temporary
    renamed over it). JPEGs at JPEG_QUALITY unless options say otherwise."""
    image = Image.fromarray(pixels)
    fmt = Image.registered_extensions().get(os.path.splitext(path)[1].lower(), "PNG")
    if fmt == "JPEG":
        options = {"quality": JPEG_QUALITY, **options}
    atomic_write(path, lambda tmp: image.save(tmp, format=fmt, **options))


def map_images(fn, items: list, workers: int, label: str, progress: bool = True) -> list:
    """[fn(item) for item in items] on `workers` threads, in order, with a progress bar counting items."""
    with Progress(label, len(items), "images", progress) as bar:
        if workers <= 1 or len(items) <= 1:
            results = []
            for item in items:
                results.append(fn(item))
                bar.update()
            return results
        with ThreadPoolExecutor(min(workers, len(items))) as pool:
            results = []
            for result in pool.map(fn, items):
                results.append(result)
                bar.update()
            return results
