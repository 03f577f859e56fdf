"""Batched crop, flip and normalisation of load_size² uint8 pairs, equal bit for bit to PairedDataset's output.

The crop offset and flip of sample i in epoch e are fastpix.data.transforms.sample_crop_flip(..., sample_rng(seed, e,
i)): the draws PairedDataset makes, so a batch does not depend on who decoded it. Normalisation on a GPU goes
through a 256-entry table computed on the CPU with to_tensor's float32 operations (/ 255, − 0.5, / 0.5): CUDA divides
by a scalar as a multiplication by its reciprocal, which can differ in the last bit, and a table cannot. On the CPU
with the native extension, crop, flip, NHWC → NCHW and the same table lookup run in one native pass
(crop_flip_normalize_into: one read of the cache, one write of the floats); without it, to_tensor's operations
themselves run (the same kernels, so the same bits, and faster than a lookup in torch). Colorization crops and flips
the RGB images the same way, then converts them to Lab where they are (augment_colorization).
"""

from __future__ import annotations

import torch

from fastpix.data import decode
from fastpix.data.lab import colorization_pair
from fastpix.data.transforms import sample_crop_flip, sample_rng

_TABLES: dict[torch.device, torch.Tensor] = {}


def normalize_table(device) -> torch.Tensor:
    device = torch.device(device)
    if device not in _TABLES:
        cpu = torch.arange(256, dtype=torch.uint8).float().div(255).sub_(0.5).div_(0.5)
        _TABLES[device] = cpu.to(device)
    return _TABLES[device]


def crop_flip_params(indices, seed: int, epoch: int, load_size: int, crop_size: int, flip: bool):
    """(x, y, flipped) LongTensors, one entry per index, for the resize_and_crop preprocess."""
    draws = [
        sample_crop_flip(
            "resize_and_crop", load_size, crop_size, (load_size, load_size), sample_rng(seed, epoch, int(i))
        )
        for i in indices
    ]
    xs = torch.tensor([d.x for d in draws], dtype=torch.long)
    ys = torch.tensor([d.y for d in draws], dtype=torch.long)
    flipped = torch.tensor([flip and d.flip for d in draws], dtype=torch.bool)
    return xs, ys, flipped


def crop_flip(
    src: torch.Tensor,
    rows,
    params,
    crop_size: int,
    gather: bool | None = None,
    pin: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crops of src[rows] (src: (N, L, L, C) uint8 on any device) → (len(rows), C, crop, crop) uint8, a view of
    NHWC memory.

    On a GPU: one advanced-indexing gather, a flip being a reversed column index. On the CPU, the native
    crop_flip_into (one pass, no per-byte flip), else per-sample row copies and one batched flip: both much faster
    than the gather. gather=None picks by device. pin: the CPU path writes into pinned memory, ready for an
    asynchronous copy to a GPU. out: the CPU path writes into this contiguous (len(rows), crop, crop, C) uint8
    tensor (a reused staging buffer: a fresh one costs page faults, about as long as the crops themselves).
    """
    dev = src.device
    if not (dev.type != "cpu" if gather is None else gather):
        xs, ys, flipped = (p.tolist() for p in params)
        shape = (len(xs), crop_size, crop_size, src.shape[3])
        if out is None:
            out = torch.empty(shape, dtype=torch.uint8, pin_memory=pin)
        elif out.shape != shape or out.dtype != torch.uint8 or out.device.type != "cpu" or not out.is_contiguous():
            raise ValueError(
                f"crop_flip: out must be a contiguous CPU uint8 tensor of shape {shape}, not "
                f"{out.dtype} {tuple(out.shape)} on {out.device}"
            )
        if native_crops(src):
            decode.crop_flip_into(src.numpy(), [int(r) for r in rows], xs, ys, flipped, out.numpy())
            return out.permute(0, 3, 1, 2)
        for k, (row, x, y) in enumerate(zip(rows, xs, ys)):
            out[k].copy_(src[int(row), y : y + crop_size, x : x + crop_size])
        mirrored = [k for k, f in enumerate(flipped) if f]
        if mirrored:
            out[mirrored] = out[mirrored].flip(2)
        return out.permute(0, 3, 1, 2)
    if out is not None:
        raise ValueError("crop_flip: out is for the CPU paths; the gather makes its own tensor")
    xs, ys, flipped = (p.to(dev, non_blocking=True) for p in params)
    rows = torch.as_tensor(rows, dtype=torch.long).to(dev, non_blocking=True)
    step = torch.arange(crop_size, device=dev)
    cols = torch.where(flipped[:, None], crop_size - 1 - step, step) + xs[:, None]
    lines = ys[:, None] + step
    return src[rows[:, None, None], lines[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def native_crops(src: torch.Tensor) -> bool:
    """Whether the native one-pass crops serve src (a C-contiguous CPU cache, extension built)."""
    return decode.backend() == "native" and src.device.type == "cpu" and src.is_contiguous()


def crop_flip_normalize(src: torch.Tensor, rows, params, crop_size: int) -> torch.Tensor:
    """normalize(crop_flip(src, rows, params, crop_size)) for a CPU src where native_crops(src), in one native pass
    through the to_tensor table: (len(rows), C, crop, crop) contiguous float32, bitwise equal to the two-step path."""
    xs, ys, flipped = (p.tolist() for p in params)
    out = torch.empty((len(xs), src.shape[3], crop_size, crop_size), dtype=torch.float32)
    decode.crop_flip_normalize_into(
        src.numpy(), [int(r) for r in rows], xs, ys, flipped, normalize_table("cpu").numpy(), out.numpy()
    )
    return out


def normalize(crops: torch.Tensor, memory_format=torch.contiguous_format, table: bool | None = None) -> torch.Tensor:
    """(B, C, H, W) uint8 → float32 in [−1, 1], bitwise as to_tensor, on crops' device, in memory_format.

    table=None: the lookup table on GPUs (see the module doc); on the CPU to_tensor's own operations, which are
    the same kernels there and faster than a lookup.
    """
    if not (crops.device.type != "cpu" if table is None else table):
        out = torch.empty(crops.shape, dtype=torch.float32, device=crops.device, memory_format=memory_format)
        return out.copy_(crops).div_(255).sub_(0.5).div_(0.5)
    lut = normalize_table(crops.device)
    if memory_format == torch.channels_last:
        nhwc = crops.permute(0, 2, 3, 1).contiguous()
        return lut.index_select(0, nhwc.view(-1).int()).view(nhwc.shape).permute(0, 3, 1, 2)
    return lut.index_select(0, crops.contiguous().view(-1).int()).view(crops.shape)


def _output_device(src: torch.Tensor, device) -> torch.device:
    device = src.device if device is None else torch.device(device)
    if device.type == "cuda" and device.index is None:  # "cuda" is the current device; a tensor names its index
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _crops_on(device: torch.device, src: torch.Tensor, rows, params, crop_size: int) -> torch.Tensor:
    """crop_flip's uint8 crops of src, taken where src lives, on device."""
    moving = src.device != device
    crops = crop_flip(src, rows, params, crop_size, pin=moving and device.type == "cuda")
    if moving:  # crops are NHWC memory: move that, not a transposed copy
        crops = crops.permute(0, 2, 3, 1).to(device, non_blocking=True).permute(0, 3, 1, 2)
    return crops


def augment(
    a: torch.Tensor, b: torch.Tensor, rows, indices, seed: int, epoch: int, crop_size: int, flip: bool, device=None
):
    """Crop/flip rows `rows` of the uint8 pair (a, b) as data-set items `indices`, normalise on `device`.

    The crops are taken where a and b live (a CPU cache crops on the CPU, so only crop² bytes cross to the GPU).
    Output: NCHW float32, contiguous on the CPU (as the DataLoader's), channels_last on CUDA (as the engine wants).
    """
    params = crop_flip_params(indices, seed, epoch, a.shape[1], crop_size, flip)
    device = _output_device(a, device)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    out = []
    for src in (a, b):
        if device.type == "cpu" and native_crops(src):
            out.append(crop_flip_normalize(src, rows, params, crop_size))
            continue
        out.append(normalize(_crops_on(device, src, rows, params, crop_size), memory_format))
    return out[0], out[1]


def augment_colorization(
    rgb: torch.Tensor, rows, indices, seed: int, epoch: int, crop_size: int, flip: bool, device=None
):
    """augment for colorization: the crops of the uint8 RGB images rgb[rows] as items `indices`, converted on
    `device` to the reference's (A, B) = (L/50 − 1, ab/110) (fastpix.data.lab), equal to ColorizationDataset's
    items (bit for bit on the CPU). Same layouts as augment's."""
    params = crop_flip_params(indices, seed, epoch, rgb.shape[1], crop_size, flip)
    device = _output_device(rgb, device)
    A, B = colorization_pair(_crops_on(device, rgb, rows, params, crop_size))
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return A.contiguous(memory_format=memory_format), B.contiguous(memory_format=memory_format)
