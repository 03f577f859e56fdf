"""What the Predictor's typed path (Predictor.run) takes and gives: one request per image, its own dropout noise
named, and one result per request that says which noise it drew."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageRequest:
    """One image to translate.

    image: what the Predictor accepts (a PIL image, an HWC uint8 array, a CHW uint8 tensor, a CHW float tensor in
    [-1, 1], a file path). seed and index: the image's dropout masks come from (seed, index), so that its output
    does not depend on the other requests of its batch; seed None lets the Predictor pick one (with dropout on).
    """

    image: object
    seed: int | None = None
    index: int = 0


@dataclass(frozen=True)
class ImageResult:
    """One translated image and the noise it drew: ImageRequest(image, seed, index) gives the same output again.

    image: in the output type asked for (a PIL image, an HWC uint8 array, a CHW float tensor in [-1, 1]). seed: the
    request's seed, or the one the Predictor picked for it (dropout on); None with dropout off and no seed given.
    """

    image: object
    seed: int | None
    index: int
