"""Pairs decoded and resized once into uint8 arrays, and batches made from rows of them: what the decode-once cache
(cache.py) and the stream (stream.py) share. The arrays hold load_size² A and B as PairedDataset resizes them; the
random crop, flip and normalisation happen per batch on the device (fastpix.data.augment)."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from fastpix.data.augment import augment, augment_colorization
from fastpix.data.dataset import DataError, EpochSampler, PairedDataset
from fastpix.data.decode import decode_pairs_into
from fastpix.data.transforms import BICUBIC
from fastpix.errors import ConfigError


def channels(dataset: PairedDataset) -> tuple[int, int]:
    """Channels of the cached a and b arrays. Colorization keeps its RGB images as a and nothing as b (0 channels):
    A and B are computed from a after the crop (augment_colorization); (3, 0) also keeps its cache key apart."""
    if dataset.colorization:
        return 3, 0
    return (1 if dataset.gray_a else 3), (1 if dataset.gray_b else 3)


def check_cacheable(dataset: PairedDataset):
    if dataset.preprocess != "resize_and_crop":
        raise ConfigError(
            f"--preprocess {dataset.preprocess} cannot be cached or streamed (only resize_and_crop "
            "can): use --data_pipeline loader"
        )


def decode_into(dataset: PairedDataset, indices, out_a: np.ndarray, out_b: np.ndarray, threads: int) -> list:
    """Decode and resize items `indices` into out_a / out_b as PairedDataset does (the two sides after the
    direction swap; colorization: its RGB image into out_a); one error message naming the file per failed item,
    else None."""
    size = dataset.load_size
    if not dataset.two_folders and not dataset.colorization:
        modes = ["L" if gray else "RGB" for gray in (dataset.gray_a, dataset.gray_b)]
        files = [dataset.paths[i][0] for i in indices]
        if dataset.reverse:  # the file's right half is the data set's A
            return decode_pairs_into(files, out_b, out_a, (size, size), modes[::-1], threads=threads)
        return decode_pairs_into(files, out_a, out_b, (size, size), modes, threads=threads)

    def one(k):  # two folders, single images: the reference chain on PIL, which releases the GIL while resizing
        try:
            if dataset.colorization:
                sides = ((dataset.load_image(indices[k]), False, out_a),)
            else:
                a, b, _, _ = dataset.load_halves(indices[k])
                sides = ((a, dataset.gray_a, out_a), (b, dataset.gray_b, out_b))
        except DataError as exc:
            out_a[k], out_b[k] = 0, 0
            return str(exc)
        for img, gray, out in sides:
            img = (img.convert("L") if gray else img).resize((size, size), BICUBIC)
            out[k] = np.asarray(img, dtype=np.uint8).reshape(out.shape[1:])
        return None

    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(one, range(len(indices))))


def report_bad(errors: dict, skip: bool):
    """errors: {index: message}. Raise naming the first file, or warn and let the caller exclude them."""
    if not errors:
        return
    first = errors[min(errors)]
    if not skip:
        more = f" (and {len(errors) - 1} more bad files)" if len(errors) > 1 else ""
        raise DataError(f"{first}{more}; pass --skip_bad_images to leave them out")
    warnings.warn(f"skipping {len(errors)} unreadable pair(s), e.g. {first}", stacklevel=3)


def paths_of(dataset: PairedDataset, indices) -> tuple[list[str], list[str]]:
    pairs = [dataset.paths[i] for i in indices]
    if dataset.reverse:
        return [p[1] for p in pairs], [p[0] for p in pairs]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def augment_items(
    dataset: PairedDataset, a: torch.Tensor, b: torch.Tensor, rows, indices, seed: int, epoch: int, device
):
    """(A, B) on device of rows `rows` of the uint8 arrays (a, b), as items `indices` of dataset in epoch `epoch`."""
    if dataset.colorization:
        return augment_colorization(a, rows, indices, seed, epoch, dataset.crop_size, dataset.flip, device)
    return augment(a, b, rows, indices, seed, epoch, dataset.crop_size, dataset.flip, device)


def make_batch(dataset: PairedDataset, indices: list[int], A: torch.Tensor, B: torch.Tensor) -> dict:
    a_paths, b_paths = paths_of(dataset, indices)
    return {"A": A, "B": B, "A_paths": a_paths, "B_paths": b_paths, "index": torch.tensor(indices, dtype=torch.long)}


def batch_plan(sampler: EpochSampler, per_rank: int) -> list[list[int]]:
    """The DataLoader path's batches (drop_last=False over the sampler's indices)."""
    order = sampler.indices()
    return [order[i : i + per_rank] for i in range(0, len(order), per_rank)]
