"""FCN-score (Isola et al. 2017, §4.1): how well an off-the-shelf segmenter recognises the generated photos.

The segmenter is a TorchScript module the user supplies (fastpix downloads nothing; the paper used FCN-8s trained
on Cityscapes). Its contract: forward(x) with x float N×3×H×W, RGB in [0, 1], returns class logits N×C×H×W (or
N×C×h×w at its own resolution); channel k is class id k. A module that wants a fixed input size declares it as an
attribute `input_size` ([H, W], or one int for a square): images are resized to it (bilinear) first. The logits are
resized (bilinear) to the label map's size before the argmax, so scores are always counted at the resolution of the
ground truth, which is never resampled.

Ground truth is the input label map: real_A's colours through a palette (--label-palette), or class-id PNGs
(--label-dir). The confusion matrix counts ground-truth rows against predicted columns over the pixels whose label
is not the ignore id; per-pixel accuracy = trace / total, per-class accuracy = diagonal / row sum, class IoU =
diagonal / (row sum + column sum − diagonal). Means are taken over the classes present in the ground truth (the
pix2pix script counts absent classes as 0 instead; on the full Cityscapes val split every class is present, so both
agree there).
"""

from __future__ import annotations

import html
import os

import numpy as np
import torch

from fastpix.data.dataset import DataError
from fastpix.errors import CheckpointError
from fastpix.palette import load_palette
from fastpix.store.user_networks import load_torchscript

ROWS = {"fake_B": "generated (fake_B)", "real_B": "real photos (real_B): the ceiling"}
PAPER = (
    "the paper's Table 1 (Cityscapes labels→photo, 256², FCN-8s): ground truth 0.80 / 0.26 / 0.21, "
    "L1+cGAN 0.66 / 0.23 / 0.17 (per-pixel acc. / per-class acc. / class IoU)"
)


def load_segmenter(path: str, device: torch.device):
    return load_torchscript(path, "--segmenter", "module", device)


def input_size(net) -> tuple[int, int] | None:
    size = getattr(net, "input_size", None)
    if size is None:
        return None
    size = [int(size)] * 2 if isinstance(size, (int, float)) else [int(v) for v in size]
    return size[0], size[1]


@torch.no_grad()
def predict(net, image: np.ndarray, shape: tuple[int, int], device: torch.device) -> tuple[np.ndarray, int]:
    """The segmenter's class ids for one HWC uint8 image, at `shape` (H, W), and its number of classes."""
    x = torch.from_numpy(np.array(image[..., :3])).permute(2, 0, 1)[None].to(device).float() / 255
    size = input_size(net)
    if size is not None and tuple(x.shape[-2:]) != size:
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    logits = net(x)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or logits.shape[0] != 1:
        raise CheckpointError(
            f"--segmenter: expected class logits 1×C×H×W for a 1×3×{x.shape[2]}×{x.shape[3]} "
            f"input, got {getattr(logits, 'shape', type(logits).__name__)}"
        )
    if tuple(logits.shape[-2:]) != tuple(shape):
        logits = torch.nn.functional.interpolate(logits.float(), size=shape, mode="bilinear", align_corners=False)
    return logits[0].argmax(0).cpu().numpy(), logits.shape[1]


def confusion(truth: np.ndarray, predicted: np.ndarray, num_classes: int, ignore_id: int) -> np.ndarray:
    keep = truth != ignore_id
    t, p = truth[keep].astype(np.int64), predicted[keep].astype(np.int64)
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(matrix: np.ndarray) -> dict:
    """Per-pixel accuracy, per-class accuracy and IoU (None for a class absent from the ground truth), and means."""
    matrix = matrix.astype(np.float64)
    diag, rows, cols = np.diag(matrix), matrix.sum(1), matrix.sum(0)
    present = rows > 0
    class_acc = np.where(present, diag / np.maximum(rows, 1), np.nan)
    iou = np.where(present, diag / np.maximum(rows + cols - diag, 1), np.nan)

    def as_list(a):
        return [None if np.isnan(v) else float(v) for v in a]

    return {
        "pixel_accuracy": float(diag.sum() / max(matrix.sum(), 1)),
        "mean_class_accuracy": float(np.nanmean(class_acc)) if present.any() else None,
        "mean_iou": float(np.nanmean(iou)) if present.any() else None,
        "class_accuracy": as_list(class_acc),
        "iou": as_list(iou),
        "confusion": matrix.astype(np.int64).tolist(),
    }


def ground_truth(kept: list, stems: list[str], cfg) -> tuple[list[np.ndarray], int, dict]:
    """The label maps of the scored images (H×W class ids), the ignore id and the class names."""
    if cfg.label_palette:
        palette = load_palette(cfg.label_palette, "--label-palette")
        maps = []
        for stem, (real_A, _, _) in zip(stems, kept):
            if real_A is None:
                raise DataError(f"--label-palette: no {stem}_real_A.png (the input label map) in --results")
            maps.append(palette.labels(real_A, cfg.label_tolerance))
        return maps, palette.ignore_id, palette.names
    from PIL import Image

    maps = []
    for stem in stems:
        path = os.path.join(cfg.label_dir, f"{stem}.png")
        if not os.path.isfile(path):
            raise DataError(f"--label-dir {cfg.label_dir}: no {stem}.png (a class-id PNG per scored image)")
        maps.append(np.asarray(Image.open(path)).astype(np.int64))
        if maps[-1].ndim != 2:
            raise DataError(f"{path}: a class-id PNG must have one channel (mode L, P or I), got {maps[-1].shape}")
    return maps, 255, {}


def check_options(cfg):
    """The FCN-score flags of an EvalConfig, checked before anything is translated."""
    if (cfg.label_palette or cfg.label_dir) and not cfg.segmenter:
        raise DataError("--label-palette / --label-dir are the FCN-score's ground truth: give --segmenter too")
    if not cfg.segmenter:
        return
    if not (cfg.label_palette or cfg.label_dir):
        raise DataError("--segmenter needs the ground truth: --label-palette FILE.json or --label-dir DIR")
    if cfg.label_palette and cfg.label_dir:
        raise DataError("--label-palette and --label-dir are two sources of the same ground truth: give one")
    if not os.path.isfile(cfg.segmenter):
        raise CheckpointError(f"--segmenter {cfg.segmenter}: no such file")
    if cfg.label_palette:
        load_palette(cfg.label_palette, "--label-palette")
    elif not os.path.isdir(cfg.label_dir):
        raise DataError(f"--label-dir {cfg.label_dir}: no such folder")


def fcn_score(kept: list, stems: list[str], cfg, device: torch.device) -> dict:
    """The FCN-score of the generated (fake_B) and the real (real_B) images of `kept` [(real_A, fake_B, real_B)]."""
    net = load_segmenter(cfg.segmenter, device)
    labels, ignore_id, names = ground_truth(kept, stems, cfg)
    predicted: dict[str, list] = {"fake_B": [], "real_B": []}
    num_classes = 1
    for images, truth in zip(kept, labels):
        for i, row in ((1, "fake_B"), (2, "real_B")):
            ids, num_classes = predict(net, images[i], truth.shape, device)
            predicted[row].append(ids)
    for stem, truth in zip(stems, labels):
        valid = truth[truth != ignore_id]
        if valid.size and (valid.max() >= num_classes or valid.min() < 0):
            raise DataError(
                f"{stem}: label id {int(valid.max())} is outside the segmenter's {num_classes} classes "
                f"(ids 0..{num_classes - 1}; ignore_id {ignore_id}) — train ids, not label ids?"
            )
    total = sum(t.size for t in labels)
    ignored = sum(int((t == ignore_id).sum()) for t in labels)
    out = {
        "segmenter": cfg.segmenter,
        "ground_truth": cfg.label_palette or cfg.label_dir,
        "ignore_id": ignore_id,
        "classes": [names.get(k, str(k)) for k in range(num_classes)],
        "n": len(labels),
        "ignored_pixel_fraction": ignored / max(total, 1),
        "reference": PAPER,
    }
    for row, maps in predicted.items():
        matrix = sum(
            (confusion(t, p, num_classes, ignore_id) for t, p in zip(labels, maps)),
            np.zeros((num_classes, num_classes), dtype=np.int64),
        )
        out[row] = scores(matrix)
    return out


def format_lines(result: dict) -> list[str]:
    lines = [
        f"FCN-score ({result['n']} images, segmenter {result['segmenter']}; "
        f"{result['ignored_pixel_fraction']:.1%} of label pixels ignored)",
        f"{'':<40}{'per-pixel acc.':>16}{'per-class acc.':>16}{'class IoU':>12}",
    ]
    for row, title in ROWS.items():
        s = result[row]
        lines.append(
            f"{title:<40}{s['pixel_accuracy']:>16.4f}{fmt(s['mean_class_accuracy']):>16}{fmt(s['mean_iou']):>12}"
        )
    return lines + [f"({result['reference']})"]


def fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summary_html(result: dict) -> str:
    body = "".join(
        f"<tr><td>{html.escape(title)}</td><td>{result[row]['pixel_accuracy']:.4f}</td>"
        f"<td>{fmt(result[row]['mean_class_accuracy'])}</td><td>{fmt(result[row]['mean_iou'])}</td></tr>"
        for row, title in ROWS.items()
    )
    return (
        f"<h3>FCN-score</h3><table border='1' cellpadding='4'><tr><th></th><th>per-pixel acc.</th>"
        f"<th>per-class acc.</th><th>class IoU</th></tr>{body}</table><p>{result['n']} images, segmenter "
        f"{html.escape(result['segmenter'])}; {result['ignored_pixel_fraction']:.1%} of label pixels ignored; "
        f"{html.escape(result['reference'])}</p>"
    )
