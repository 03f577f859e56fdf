"""An edges -> photo data set from a folder of photos, as the reference made edges2shoes and edges2handbags: an edge
map per photo, post-processed as its scripts/edges/PostprocessHED.m does, then edges | photo side by side.

The post-processing (`simple_edges`) is the reference's, step by step: non-maximum suppression along the edge normal
(Dollár's edgesNms: the orientation from the second derivatives of the map smoothed by a triangle filter of radius
4, a neighbour at ±1 pixel along it must not be stronger than 1.01× the pixel, and edges fade out linearly over the 5
pixels nearest the border), a threshold of 25/255, thinning to one-pixel lines, removal of edges of fewer than 5
pixels (8-connected), and inversion to black edges on white.

Its input, a soft edge map in [0, 1], comes from one of two detectors:
- the built-in one (scikit-image, the 'edges' extra): the Sobel gradient magnitude of the grey photo smoothed by a
  Gaussian of SIGMA pixels, divided by its STRENGTH_PERCENTILE-th percentile over the photo (so that the threshold
  means "a tenth of this photo's strongest edges", whatever its contrast) and clipped to [0, 1]. The two constants
  were chosen by eye on scikit-image's sample photos (astronaut, chelsea, coffee) among sigma 1.5-2.5 and the 99th
  percentile to the maximum: larger values lose detail, smaller ones keep more texture.
- HED (Xie & Tu 2015), the reference's, when the user supplies it as TorchScript (--hed FILE.pt; never downloaded):
  a module taking float N×3×H×W RGB in [0, 1] and returning the fused edge probability N×1×H×W in [0, 1]. From
  sniklaus/pytorch-hed (whose Network takes BGR in [0, 1]), for example:
      class RGBtoHED(torch.nn.Module):
          def __init__(self, net):
              super().__init__()
              self.net = net
          def forward(self, rgb):
              return self.net(rgb.flip(1))  # RGB -> BGR
      torch.jit.trace(RGBtoHED(Network().eval()), torch.rand(1, 3, 256, 256)).save("hed.pt")
  The photo, resized to size×size, is padded by reflection (as the reference's batch_hed.py pads) before HED runs.

How they differ: HED has learned which edges a person would draw — object outlines and the main creases — and
ignores texture, so its maps are sparse, closed outlines. The gradient detector marks every strong change of
brightness: it finds the outline where the object stands out from its background, but also texture, printed
patterns and shadow boundaries, and misses outlines between regions of similar brightness. A model trained on
built-in edges expects such maps at test time: drawings made by hand look more like HED's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from fastpix.config import EdgesConfig
from fastpix.data.dataset import list_images
from fastpix.data.decode import decode_image
from fastpix.data.image_folders import cores, map_images, separate_output, write_image
from fastpix.errors import DataError, DecodeError, MissingDependency

SIGMA = 2.0  # the built-in detector's Gaussian, in pixels of the size×size photo
STRENGTH_PERCENTILE = 99.5
NMS_RADIUS, NMS_BORDER, NMS_MARGIN = 1, 5, 1.01  # the reference's edgesNmsMex(E, O, 1, 5, 1.01)
TRIANGLE_RADIUS = 4  # the reference's convTri(E, 4) before the orientation
HED_PAD = 32  # reflection padding around the photo for HED, in pixels


def _skimage():
    try:
        import skimage.filters
        import skimage.measure
        import skimage.morphology
    except ImportError as exc:
        raise MissingDependency("scikit-image", "edges", "fastpix data edges") from exc
    return skimage


# ---- the reference's post-processing -------------------------------------------------------------------------------


def _triangle_smooth(e: np.ndarray, r: int) -> np.ndarray:
    """Dollár's convTri(E, r): a separable [1 2 … r+1 … 2 1]/(r+1)² filter, symmetric padding (scipy's 'reflect'
    repeats the edge pixel, as MATLAB's 'symmetric')."""
    from scipy.ndimage import convolve1d

    f = np.concatenate([np.arange(1, r + 2), np.arange(r, 0, -1)]).astype(np.float32) / (r + 1) ** 2
    return convolve1d(convolve1d(e, f, axis=0, mode="reflect"), f, axis=1, mode="reflect")


def edge_orientation(e: np.ndarray) -> np.ndarray:
    """The normal of the edges of e in [0, π), as PostprocessHED's EdgeNMS computes it (x = column, y = row)."""
    oy, ox = np.gradient(_triangle_smooth(e, TRIANGLE_RADIUS))
    oxy, oxx = np.gradient(ox)
    oyy, _ = np.gradient(oy)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + 1e-5)), np.pi)


def _bilinear(e: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """e at (x, y) (column, row), bilinear, clamped inside as edgesNmsMex's interp."""
    h, w = e.shape
    x, y = np.clip(x, 0, w - 1.001), np.clip(y, 0, h - 1.001)
    x0, y0 = x.astype(np.int64), y.astype(np.int64)
    dx, dy = x - x0, y - y0
    return (
        e[y0, x0] * (1 - dx) * (1 - dy)
        + e[y0, x0 + 1] * dx * (1 - dy)
        + e[y0 + 1, x0] * (1 - dx) * dy
        + e[y0 + 1, x0 + 1] * dx * dy
    )


def non_maximum_suppression(e: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Dollár's edgesNmsMex(E, O, r=1, s=5, m=1.01): a pixel is kept where no neighbour at ±1 along the normal o is
    stronger than 1.01× it; then edges fade out linearly over the 5 pixels nearest each border."""
    h, w = e.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    out = e.copy()
    for d in (-NMS_RADIUS, NMS_RADIUS):
        out[e * NMS_MARGIN < _bilinear(e, xs + d * np.cos(o), ys + d * np.sin(o))] = 0
    s = min(NMS_BORDER, w // 2, h // 2)
    ramp = np.arange(s, dtype=np.float32) / s
    out[:, :s] *= ramp
    out[:, w - s :] *= ramp[::-1]
    out[:s, :] *= ramp[:, None]
    out[h - s :, :] *= ramp[::-1, None]
    return out


def simple_edges(e: np.ndarray, threshold: float = 25 / 255, small_edge: int = 5) -> np.ndarray:
    """PostprocessHED's SimpleEdge on an edge strength map e in [0, 1]: uint8, 0 on the edges, 255 elsewhere."""
    skimage = _skimage()
    e = e.astype(np.float32)
    kept = non_maximum_suppression(e, edge_orientation(e)) >= max(np.finfo(np.float32).eps, threshold)
    thin = skimage.morphology.thin(kept)
    labels = skimage.measure.label(thin, connectivity=2)
    sizes = np.bincount(labels.ravel())
    large = sizes >= small_edge
    large[0] = False  # the background
    return np.where(large[labels], 0, 255).astype(np.uint8)


# ---- the detectors ---------------------------------------------------------------------------------------------------


def gradient_edges(rgb: np.ndarray) -> np.ndarray:
    """The built-in detector's soft edge map in [0, 1] of an H×W×3 uint8 photo (see the module docstring)."""
    skimage = _skimage()
    grey = np.asarray(Image.fromarray(rgb).convert("L"), np.float32) / 255
    strength = skimage.filters.sobel(skimage.filters.gaussian(grey, sigma=SIGMA))
    scale = np.percentile(strength, STRENGTH_PERCENTILE)
    return np.clip(strength / scale, 0, 1) if scale > 0 else np.zeros_like(strength)


class HED:
    """A user's TorchScript HED (see the module docstring): soft edge maps of photos."""

    def __init__(self, path: str, device: str | None = None):
        import torch

        from fastpix.runtime import default_device

        if not os.path.isfile(path):
            raise DataError(f"--hed {path}: no such file (a TorchScript HED network; see fastpix data edges --help)")
        self.device = default_device(device)
        try:
            self.net = torch.jit.load(path, map_location=self.device).eval()
        except Exception as exc:
            raise DataError(f"--hed {path}: not a TorchScript network ({' '.join(str(exc).split())[:200]})") from exc

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import torch

        x = torch.tensor(rgb).permute(2, 0, 1)[None].float().div(255)
        pad = min(HED_PAD, x.shape[2] - 1, x.shape[3] - 1)  # reflection needs a pad smaller than the side
        x = torch.nn.functional.pad(x, (pad,) * 4, mode="reflect").to(self.device)
        with torch.inference_mode():
            y = self.net(x)
        if y.dim() != 4 or tuple(y.shape[:2]) != (1, 1) or y.shape[2:] != x.shape[2:]:
            raise DataError(
                f"the --hed network answered shape {tuple(y.shape)} for input {tuple(x.shape)}: it must "
                "return the edge probability N×1×H×W"
            )
        return y[0, 0, pad : y.shape[2] - pad, pad : y.shape[3] - pad].float().clamp(0, 1).cpu().numpy()


# ---- the data set ---------------------------------------------------------------------------------------------------


@dataclass
class EdgesResult:
    written: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (photo, why)


def edges_pair(rgb: np.ndarray, cfg: EdgesConfig, detector=None) -> np.ndarray:
    """edges | photo, size×2size×3 uint8, for one H×W×3 uint8 photo."""
    photo = np.asarray(Image.fromarray(rgb).resize((cfg.size, cfg.size), Image.Resampling.BICUBIC))
    soft = (detector or gradient_edges)(photo)
    edges = simple_edges(soft, cfg.threshold, cfg.small_edge)
    return np.concatenate([np.repeat(edges[:, :, None], 3, axis=2), photo], axis=1)


def make_edges_dataset(cfg: EdgesConfig, progress: bool = True) -> EdgesResult:
    """<out>/<sub-folder>/<stem>.png for each photo under cfg.input (see the module docstring)."""
    _skimage()
    separate_output(cfg.out, "--out", {"--input": cfg.input})
    detector = HED(cfg.hed, cfg.device) if cfg.hed else None
    photos = list_images(cfg.input)
    if not photos:
        raise DataError(f"--input {cfg.input} holds no images")

    def make(path):
        try:
            pair = edges_pair(decode_image(path), cfg, detector)
        except DecodeError as exc:
            return str(exc)
        target = os.path.join(cfg.out, os.path.splitext(os.path.relpath(path, cfg.input))[0] + ".png")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        write_image(target, pair)
        return None

    # One HED forward at a time on a GPU; the built-in detector runs on every core.
    workers = 1 if detector is not None and detector.device.type == "cuda" else cores()
    errors = map_images(make, photos, workers, "edges", progress)
    result = EdgesResult(written=sum(e is None for e in errors))
    result.unreadable = [(p, e) for p, e in zip(photos, errors) if e is not None]
    return result
