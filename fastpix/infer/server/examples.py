"""The draw page's examples (`fastpix serve --examples DIR`): the pairs of one split, each served as the data set's
own aligned format, input | target side by side at the canvas size."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from fastpix.errors import DataError


class Examples:
    """The pairs of `folder` (a split: aligned A|B images, or A/ and B/ folders), listed once; decoded on request.

    The input is resized to the canvas with nearest-neighbour when it is a label map (a palette is given), so that
    its colours stay the palette's exact ones, else bicubically as the data pipeline resizes; the target bicubically.
    """

    def __init__(self, folder: str, direction: str, size: int, labels: bool, grey_input: bool):
        from fastpix.data.dataset import PairedDataset

        folder = os.path.normpath(folder)
        if not os.path.isdir(folder):
            raise DataError(
                f"--examples {folder}: no such folder (give a split: a folder of aligned A|B images, or "
                "one holding A/ and B/)"
            )
        self.dataset = PairedDataset(os.path.dirname(folder) or ".", os.path.basename(folder), direction)
        self.size, self.grey_input = size, grey_input
        self.input_resample = Image.Resampling.NEAREST if labels else Image.Resampling.BICUBIC

    def __len__(self) -> int:
        return len(self.dataset)

    def name(self, index: int) -> str:
        """The example's file name in its split (in A/ for two folders)."""
        dataset = self.dataset
        return os.path.relpath(
            dataset.paths[index][0], os.path.join(dataset.split, "A") if dataset.two_folders else dataset.split
        )

    def pair_png(self, index: int) -> bytes:
        """Example `index` as one PNG: its input | its target, each size × size; DataError when it cannot be read."""
        a, b, _, _ = self.dataset.load_halves(index)
        a = a.convert("L") if self.grey_input else a
        side = (self.size, self.size)
        halves = [
            a.resize(side, self.input_resample).convert("RGB"),
            b.resize(side, Image.Resampling.BICUBIC).convert("RGB"),
        ]
        buffer = io.BytesIO()
        Image.fromarray(np.concatenate([np.asarray(h) for h in halves], axis=1)).save(buffer, format="PNG")
        return buffer.getvalue()
