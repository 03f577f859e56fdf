"""The reference's colorization data set (--dataset_mode colorization): single RGB images, each its own pair.

Every image under <dataroot>/<phase>/ (recursively, sorted, as the aligned layout's files) is read as RGB, resized,
cropped and flipped as the aligned data set's images are (fastpix.data.transforms), then converted to CIE Lab
(fastpix.data.lab): A = L/50 − 1 (the input, one channel), B = ab/110 (the target, two channels). The decode-once
cache and the stream keep the RGB image instead and convert after the crop and flip, on the device.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from fastpix.data.dataset import PairedDataset, list_images, open_rgb_or_l
from fastpix.data.decode import DataError
from fastpix.data.lab import colorization_pair
from fastpix.data.transforms import sample_crop_flip, sample_rng, transform_image
from fastpix.errors import ConfigError


class ColorizationDataset(PairedDataset):
    """(A, B) = (L/50 − 1, ab/110) of the images of a split; the constructor takes PairedDataset's arguments, and
    the reference's colorization settings only: input_nc 1, output_nc 2, direction AtoB."""

    colorization = True

    def __init__(
        self,
        dataroot: str,
        phase: str = "train",
        direction: str = "AtoB",
        input_nc: int = 1,
        output_nc: int = 2,
        preprocess: str = "resize_and_crop",
        load_size: int = 286,
        crop_size: int = 256,
        flip: bool = True,
        max_dataset_size: int | None = None,
        seed: int = 0,
        skip_bad_images: bool = False,
    ):
        if (input_nc, output_nc, direction) != (1, 2, "AtoB"):
            raise ConfigError(
                f"colorization translates L (input_nc 1) to ab (output_nc 2), AtoB: not input_nc "
                f"{input_nc}, output_nc {output_nc}, {direction}"
            )
        super().__init__(
            dataroot,
            phase,
            direction,
            input_nc,
            output_nc,
            preprocess,
            load_size,
            crop_size,
            flip,
            max_dataset_size,
            seed,
            skip_bad_images,
        )
        self.two_folders = False  # A/ and B/ sub-folders are just more images here, as in the reference

    def list_pairs(self, split: str) -> list[tuple[str, str]]:
        return [(p, p) for p in list_images(split)]

    def load_image(self, index: int):
        """The RGB image of item `index` (PIL), before any transform."""
        path = self.paths[index][0]
        image = open_rgb_or_l(path)
        if self.preprocess == "crop" and min(image.size) < self.crop_size:
            raise DataError(
                f"{path}: image {image.size[0]}×{image.size[1]} is smaller than --crop_size {self.crop_size}"
            )
        return image

    def __getitem__(self, index):
        path = self.paths[index][0]
        try:
            image = self.load_image(index)
        except DataError as exc:
            if not self.skip_bad_images:
                raise
            warnings.warn(f"skipping: {exc}", stacklevel=2)
            return None
        params = sample_crop_flip(
            self.preprocess, self.load_size, self.crop_size, image.size, sample_rng(self.seed, self.epoch, index)
        )
        image = transform_image(
            image, params, self.preprocess, self.load_size, self.crop_size, self.flip, grayscale=False
        )
        A, B = colorization_pair(torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1))
        return {"A": A, "B": B, "A_paths": path, "B_paths": path, "index": index}
