"""Paired datasets in the reference's aligned layout (A|B side by side) or in two folders (A/ and B/)."""

from __future__ import annotations

import os
import warnings

import torch
from PIL import Image

from fastpix.data.decode import DataError, decode_image, image_size, special_file
from fastpix.data.transforms import sample_crop_flip, sample_rng, to_tensor, transform_image
from fastpix.errors import ConfigError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff")


def list_images(folder: str) -> list[str]:
    """Image files under folder, recursively, sorted (the reference's listing; extensions in any case). A FIFO,
    socket or device named like an image is left out with a warning naming it: reading it would block or never end.
    Links to folders are not followed (as os.walk); a dangling link is listed, for the decoder to name."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder} is not a folder (is --dataroot right, and does it have this split?)")
    found: list[str] = []
    _scan(folder, found)
    return sorted(found)


def _scan(folder: str, found: list[str]):
    with os.scandir(folder) as entries:  # the directory's own entry types: no stat for most files
        for entry in entries:
            if entry.is_dir():
                if not entry.is_symlink():
                    _scan(entry.path, found)
            elif entry.name.lower().endswith(IMG_EXTENSIONS):
                kind = None if entry.is_file() else special_file(entry.path)
                if kind is None:
                    found.append(entry.path)
                else:
                    warnings.warn(f"{entry.path}: {kind}, not a regular file: skipped", stacklevel=3)


def open_rgb_or_l(path: str, mode: str = "RGB") -> Image.Image:
    """The image at path as PIL's convert(mode) gives it, through the decoding facade (fastpix.data.decode): a
    DecodeError (a DataError) naming the file for whatever cannot be read, decompression bombs included."""
    arr = decode_image(path, mode)
    return Image.fromarray(arr[:, :, 0] if mode == "L" else arr)


def split_image_size(dataroot: str, phase: str, single: bool = False) -> tuple[int, int]:
    """(height, width) of the first pair's A image in <dataroot>/<phase> (aligned A|B: half the file's width;
    single: colorization's whole images), read from its header alone: the size the split's images have."""
    split = os.path.join(dataroot, phase)
    two_folders = not single and os.path.isdir(os.path.join(split, "A"))
    files = list_images(os.path.join(split, "A") if two_folders else split)
    if not files:
        raise DataError(f"{split} holds no images ({', '.join(IMG_EXTENSIONS)})")
    width, height = image_size(files[0])
    return height, width if two_folders or single else int(width / 2)


class PairedDataset(torch.utils.data.Dataset):
    """Pairs (A, B) of a split, transformed as the reference does.

    Layouts: <dataroot>/<phase>/*.jpg holding A|B side by side (split at int(width/2)), or <dataroot>/<phase>/A/
    and <dataroot>/<phase>/B/ holding files of the same names.
    """

    colorization = False  # fastpix.data.colorization: A and B are the Lab of one RGB image

    def __init__(
        self,
        dataroot: str,
        phase: str = "train",
        direction: str = "AtoB",
        input_nc: int = 3,
        output_nc: int = 3,
        preprocess: str = "resize_and_crop",
        load_size: int = 286,
        crop_size: int = 256,
        flip: bool = True,
        max_dataset_size: int | None = None,
        seed: int = 0,
        skip_bad_images: bool = False,
    ):
        if dataroot is None or not os.path.isdir(dataroot):
            raise DataError(f"--dataroot {dataroot} is not a folder")
        if "resize" in preprocess and load_size < crop_size:
            raise DataError(f"--load_size {load_size} is smaller than --crop_size {crop_size}")
        split = os.path.join(dataroot, phase)
        if not os.path.isdir(split):
            raise DataError(f"{split} does not exist: --dataroot {dataroot} has no '{phase}' split")
        self.dataroot, self.split = dataroot, split
        self.two_folders = os.path.isdir(os.path.join(split, "A")) and os.path.isdir(os.path.join(split, "B"))
        self.paths = self.list_pairs(split)
        if max_dataset_size is not None:
            self.paths = self.paths[:max_dataset_size]
        if not self.paths:
            raise DataError(f"{split} holds no images ({', '.join(IMG_EXTENSIONS)})")
        self.reverse = direction == "BtoA"
        # After the direction swap, the model's input is grey iff input_nc == 1 (the reference reaches the same
        # by choosing the file halves' channels with the direction, then swapping).
        self.gray_a, self.gray_b = input_nc == 1, output_nc == 1
        self.preprocess, self.load_size, self.crop_size, self.flip = preprocess, load_size, crop_size, flip
        self.seed, self.epoch, self.skip_bad_images = seed, 0, skip_bad_images

    def list_pairs(self, split: str) -> list[tuple[str, str]]:
        """(file of A, file of B) per item of the split, sorted: one file twice for A|B side by side."""
        if self.two_folders:
            return self._match_two_folders(split)
        return [(p, p) for p in list_images(split)]

    @staticmethod
    def _match_two_folders(split):
        folder_a, folder_b = os.path.join(split, "A"), os.path.join(split, "B")
        files_a = {os.path.relpath(p, folder_a): p for p in list_images(folder_a)}
        files_b = {os.path.relpath(p, folder_b): p for p in list_images(folder_b)}
        unmatched = sorted(set(files_a) ^ set(files_b))
        if unmatched:
            raise DataError(
                f"{split}: A/ and B/ must hold the same file names; unmatched: "
                f"{', '.join(unmatched[:5])}{' ...' if len(unmatched) > 5 else ''}"
            )
        return [(files_a[k], files_b[k]) for k in sorted(files_a)]

    def none_readable(self) -> DataError:
        """The error for a split of which --skip_bad_images left nothing: training on it would write untrained
        weights."""
        return DataError(
            f"{self.split}: none of its {len(self)} images could be read (--skip_bad_images skipped them all)"
        )

    def set_epoch(self, epoch: int):
        """Crops and flips of an epoch derive from (seed, epoch, index)."""
        self.epoch = epoch

    def __len__(self):
        return len(self.paths)

    def load_halves(self, index):
        path_a, path_b = self.paths[index]
        if self.two_folders:
            a, b = open_rgb_or_l(path_a), open_rgb_or_l(path_b)
        else:
            ab = open_rgb_or_l(path_a)
            w, h = ab.size
            if w < 2:
                raise DataError(f"{path_a}: {w}×{h} is too narrow to hold A|B side by side")
            w2 = int(w / 2)
            a, b = ab.crop((0, 0, w2, h)), ab.crop((w2, 0, w, h))
        if self.preprocess == "crop" and min(a.size) < self.crop_size:
            raise DataError(
                f"{path_a}: image half {a.size[0]}×{a.size[1]} is smaller than --crop_size {self.crop_size}"
            )
        return (b, a, path_b, path_a) if self.reverse else (a, b, path_a, path_b)

    def __getitem__(self, index):
        try:
            a, b, path_a, path_b = self.load_halves(index)
        except DataError as exc:
            if not self.skip_bad_images:
                raise
            warnings.warn(f"skipping: {exc}", stacklevel=2)
            return None
        params = sample_crop_flip(
            self.preprocess, self.load_size, self.crop_size, a.size, sample_rng(self.seed, self.epoch, index)
        )
        common = dict(preprocess=self.preprocess, load_size=self.load_size, crop_size=self.crop_size, flip=self.flip)
        img_a = transform_image(a, params, grayscale=self.gray_a, **common)
        img_b = transform_image(b, params, grayscale=self.gray_b, **common)
        return {"A": to_tensor(img_a), "B": to_tensor(img_b), "A_paths": path_a, "B_paths": path_b, "index": index}


def collate_pairs(items):
    """Drop skipped (unreadable) samples; None when a whole batch was skipped."""
    items = [it for it in items if it is not None]
    if not items:
        return None
    return torch.utils.data.default_collate(items)


class EpochSampler(torch.utils.data.Sampler):
    """A shuffle that is a function of (seed, epoch), starting at a given position (for exact resume).

    With several ranks, each global batch of global_batch samples is cut into equal per-rank slices, and the last
    global batch is dropped when it is incomplete (every rank must take part in every step).
    """

    def __init__(self, n: int, seed: int, shuffle: bool, global_batch: int = 1, rank: int = 0, world: int = 1):
        if global_batch % world:
            raise ConfigError(f"--batch_size {global_batch} must be a multiple of the number of processes {world}")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.global_batch, self.rank, self.world = global_batch, rank, world
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0):
        self.epoch, self.start = epoch, start

    def order(self):
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def indices(self):
        remaining = self.order()[self.start :]
        if self.world == 1:
            return remaining
        per_rank = self.global_batch // self.world
        mine = []
        for b in range(len(remaining) // self.global_batch):
            first = b * self.global_batch + self.rank * per_rank
            mine += remaining[first : first + per_rank]
        return mine

    def __iter__(self):
        return iter(self.indices())

    def __len__(self):
        return len(self.indices())


def make_loader(
    dataset: PairedDataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
):
    """batch_size is the global batch; each rank's loader yields its slice of every global batch."""
    sampler = EpochSampler(len(dataset), seed, shuffle, batch_size, rank, world)
    # Its own generator, so that creating an iterator does not draw from the global RNG (exact resume).
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size // world,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_pairs,
        drop_last=False,
        generator=torch.Generator(),
        pin_memory=torch.cuda.is_available(),
    )
    return loader, sampler
