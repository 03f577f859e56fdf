"""Paired image data: the reference's aligned layout, a two-folder layout, colorization's single images, their
transforms and the demo set."""

from fastpix.data.colorization import ColorizationDataset
from fastpix.data.dataset import PairedDataset, list_images, make_loader

# The data set class of each model kind (fastpix.config.model_kind); each constructor takes PairedDataset's arguments.
DATASETS = {"pix2pix": PairedDataset, "colorization": ColorizationDataset}

__all__ = ["DATASETS", "ColorizationDataset", "PairedDataset", "list_images", "make_loader"]
