"""The server's images: request bytes to the Predictor's input (refused from the header when too large), and its
output to PNG or JPEG as the Accept header asks."""

from __future__ import annotations

import io
import os
import threading

from fastapi import HTTPException
from PIL import Image

# Decoding is CPU-bound: more decodes at once than cores gain nothing, and each holds up to 3 × max_pixels bytes.
DECODE_SLOTS = max(1, min(8, os.cpu_count() or 1))


def decode_slots() -> threading.BoundedSemaphore:
    """One app's decode slots: request images decoded at once (each app has its own)."""
    return threading.BoundedSemaphore(DECODE_SLOTS)


def decode_request_image(data: bytes, channels: int, multiple: int, max_pixels: int, slots: threading.BoundedSemaphore):
    """Request bytes → (CHW uint8 tensor with `channels` (the Predictor's image_channels), the padded pixels its
    forward pass will cost); 400 / 413 for what cannot be served. The size is checked from the header, padded as the
    Predictor pads it, before any pixel is decoded (in one of `slots`): a 1×N strip costs a U-Net multiple×N pixels,
    not N."""
    import torch

    from fastpix.data.decode import decode_image, image_size
    from fastpix.errors import DecodeError, ImageTooLarge
    from fastpix.infer.images import padded_size

    if not data:
        raise HTTPException(400, "the request holds no image data")
    try:
        w, h = image_size(data, max_pixels=max_pixels, name="the image")
    except ImageTooLarge as exc:
        raise HTTPException(413, f"image too large: {exc}") from None
    except DecodeError:  # whatever the bytes are, the client sent no image
        raise HTTPException(
            400, f"not an image: {len(data)} bytes in no format PIL reads (PNG, JPEG, BMP, TIFF, WebP …)"
        ) from None
    ph, pw = padded_size(h, w, multiple)
    if ph * pw > max_pixels:
        raise HTTPException(
            413,
            f"image is {w}x{h} = {w * h} pixels, which the generator pads to {pw}x{ph} = "
            f"{pw * ph}; this server accepts at most {max_pixels} (padded)",
        )
    try:
        with slots:
            array = decode_image(data, "L" if channels == 1 else "RGB", max_pixels=w * h, name="image")
    except DecodeError as exc:  # truncated or corrupt pixel data
        raise HTTPException(
            400, f"the {w}x{h} image cannot be decoded (corrupt or truncated?): {str(exc).removeprefix('image: ')}"
        ) from None
    return torch.from_numpy(array).permute(2, 0, 1), ph * pw


def output_format(accept: str | None) -> str:
    """'PNG' or 'JPEG': the one the Accept header prefers (by q, then order); PNG when it names neither."""
    best, best_q = "PNG", -1.0
    for part in (accept or "").split(","):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        fmt = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG"}.get(media.lower())
        if fmt and q > 0 and q > best_q:
            best, best_q = fmt, q
    return best


def encode_image(array, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()
