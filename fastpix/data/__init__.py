"""Paired image data: the reference's aligned layout, a two-folder layout, its transforms and the demo set."""
from fastpix.data.dataset import PairedDataset, list_images, make_loader

__all__ = ["PairedDataset", "list_images", "make_loader"]
