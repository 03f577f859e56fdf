"""Image decoding for aligned A|B pairs: the native decoder (fastpix._decode) when built, PIL otherwise.

Both paths give the pixels of the reference chain: ``Image.open(f).convert('RGB')``, the split at ``int(w / 2)``,
``convert('L')`` for a grey side, then ``resize(size, BICUBIC)``. JPEG (baseline, progressive, grey, CMYK) and PNG
(every colour type and depth) decode natively; other formats go to PIL. Native output equals PIL's exactly, resize
included. ``draft=True`` lets JPEGs decode at 1/2, 1/4 or 1/8 scale in the DCT domain when the target is at most
half the source: faster, but then pixels differ from PIL's (measured, 1200×600 → 286² halves: photo-like content
mean |diff| 0.35, max 3 grey levels; a hard synthetic texture mean 5.2, max 59; see tests/test_decode.py).

This module is the one way fastpix decodes an image file or a request body: the datasets, the Predictor, the server
and eval all come here. Every error is a DecodeError (a DataError) whose message names the file. Images of more than
``MAX_PIXELS`` pixels (or the caller's max_pixels) are refused from their header, before any pixel memory is
allocated, with ImageTooLarge; ``image_size`` reads only the header, for callers that bound their own work by size.
"""

from __future__ import annotations

import io
import os
import stat
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from fastpix.errors import DataError, DecodeError, ImageTooLarge

try:
    from fastpix import _decode as _native
except ImportError:  # extension not built: PIL serves
    _native = None

__all__ = [
    "DataError",
    "DecodeError",
    "ImageTooLarge",
    "MAX_PIXELS",
    "backend",
    "crop_flip_into",
    "crop_flip_normalize_into",
    "decode_image",
    "decode_pair",
    "decode_pairs_into",
    "image_size",
]

# PIL raises DecompressionBombError above twice its MAX_IMAGE_PIXELS; the same default here. Assign to change.
MAX_PIXELS = 178956970

_CHANNELS = {"RGB": 3, "L": 1}
_BICUBIC = Image.Resampling.BICUBIC


_BOMB_GUARD = "(decompression bomb guard)"  # ends the native decoder's message for the size limit


def _native_error(name, exc) -> DecodeError:
    message = f"{name}: {exc}"
    return ImageTooLarge(message) if str(exc).endswith(_BOMB_GUARD) else DecodeError(message)


def backend() -> str:
    """ "native" when the C++ decoder is built and importable, else "pil"."""
    return "native" if _native is not None else "pil"


def _channels(mode: str) -> int:
    try:
        return _CHANNELS[mode]
    except KeyError:
        raise ValueError(f"mode must be 'RGB' or 'L', not {mode!r}") from None


def _path(path_or_bytes) -> str:
    path = os.fspath(path_or_bytes)
    return os.fsdecode(path) if isinstance(path, bytes) else path


def special_file(path: str) -> str | None:
    """What path is when it is not a regular file (a FIFO, a socket, a device, a folder), else None (a regular file,
    a link to one, or nothing there: the decoder's own error names a missing file). Reading a FIFO blocks until a
    writer comes, for ever if none does; a device can stream without end: neither is ever opened as an image."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, kind in (
        (stat.S_ISREG, None),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _not_regular(name: str, kind: str) -> DecodeError:
    return DecodeError(f"{name}: {kind}, not a regular file: not read")


def _source(path_or_bytes, name=None):
    """(what the native decoder takes, the name errors use: the path, else `name`, else "<bytes>"); a path that is
    not a regular file is refused here, before anything opens it."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return path_or_bytes, name or "<bytes>"
    path = _path(path_or_bytes)
    kind = special_file(path)
    if kind is not None:
        raise _not_regular(name or path, kind)
    return path, name or path


def _limit(max_pixels):
    return MAX_PIXELS if max_pixels is None else int(max_pixels)


def _native_source(src, name):
    """The native decoder takes a path as UTF-8; a file name that is not (undecodable bytes, kept by os.fsdecode
    as surrogates) is read here and passed as bytes."""
    if not isinstance(src, str):
        return src
    try:
        src.encode("utf-8")
        return src
    except UnicodeEncodeError:
        try:
            with open(src, "rb") as f:
                return f.read()
        except OSError as exc:
            raise DecodeError(f"{name}: cannot open: {exc.strerror}") from None


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------------- PIL path


def _pil_open(src, name, max_pixels) -> Image.Image:
    """The opened (header read, pixels not decoded) image; ImageTooLarge over max_pixels."""
    try:
        im = Image.open(io.BytesIO(bytes(src)) if not isinstance(src, str) else src)
    except Image.DecompressionBombError as exc:  # PIL's own guard, at twice Image.MAX_IMAGE_PIXELS
        raise ImageTooLarge(f"{name}: {exc}") from None
    except FileNotFoundError:
        raise DecodeError(f"{name}: no such file (or a link to a missing file)") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on bad data; all mean "cannot decode"
        raise DecodeError(f"{name}: not an image in any format PIL reads ({type(exc).__name__})") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ImageTooLarge(
            f"{name}: image size {w}x{h} ({w * h} pixels) exceeds the limit of {max_pixels} pixels {_BOMB_GUARD}"
        )
    return im


def _pil_open_rgb(src, name, max_pixels, draft_size=None) -> Image.Image:
    im = _pil_open(src, name, max_pixels)
    try:
        with im:
            if draft_size is not None and im.format == "JPEG":
                im.draft("RGB", draft_size)
            return im.convert("RGB")
    except Exception as exc:
        raise DecodeError(f"{name}: {exc}") from exc


def _pil_half(img: Image.Image, box, mode, size) -> np.ndarray:
    half = img.crop(box)
    if mode == "L":
        half = half.convert("L")
    if size is not None and half.size != tuple(size):
        half = half.resize(tuple(size), _BICUBIC)
    arr = np.asarray(half, dtype=np.uint8)
    return arr.reshape(arr.shape[0], arr.shape[1], _channels(mode))


def _pil_pair(src, name, mode_a, mode_b, size, draft, max_pixels):
    draft_size = (2 * size[0], size[1]) if (draft and size is not None) else None
    img = _pil_open_rgb(src, name, max_pixels, draft_size)
    w, h = img.size
    if w < 2:
        raise DecodeError(f"{name}: image is too narrow to split into A|B (width {w})")
    w2 = int(w / 2)
    return _pil_half(img, (0, 0, w2, h), mode_a, size), _pil_half(img, (w2, 0, w, h), mode_b, size)


# ---------------------------------------------------------------------------------------------------- public API


def image_size(path_or_bytes, *, max_pixels: int | None = None, name: str | None = None) -> tuple[int, int]:
    """(width, height) from the image's header alone (no pixel is decoded); DecodeError when no format is
    recognised, ImageTooLarge over max_pixels (default MAX_PIXELS). name: what errors call the source."""
    src, name = _source(path_or_bytes, name)
    with _pil_open(src, name, _limit(max_pixels)) as im:
        return im.size


def decode_image(
    path_or_bytes, mode: str = "RGB", *, max_pixels: int | None = None, name: str | None = None
) -> np.ndarray:
    """Decode a whole image to a uint8 H×W×C array (C = 3 for "RGB", 1 for "L"), as PIL's convert(mode).
    name: what errors call the source (default: its path, or "<bytes>")."""
    c = _channels(mode)
    src, name = _source(path_or_bytes, name)
    limit = _limit(max_pixels)
    if _native is not None:
        try:
            return _native.decode(_native_source(src, name), c, limit)
        except _native.UnsupportedFormat:
            pass
        except _native.DecodeError as exc:
            raise _native_error(name, exc) from None
    img = _pil_open_rgb(src, name, limit)
    if mode == "L":
        img = img.convert("L")
    arr = np.asarray(img, dtype=np.uint8)
    return arr.reshape(arr.shape[0], arr.shape[1], c)


def decode_pair(
    path_or_bytes,
    mode_a: str = "RGB",
    mode_b: str = "RGB",
    size=None,
    draft: bool = False,
    *,
    max_pixels: int | None = None,
):
    """Decode an aligned A|B image into (A, B) uint8 H×W×C arrays, split at int(width / 2).

    size=(w, h) resizes each half bicubically exactly as PIL does. draft=True (JPEG only, with a size at most half
    the source) decodes at reduced scale in the DCT domain: faster, not PIL-exact.
    """
    ca, cb = _channels(mode_a), _channels(mode_b)
    if size is not None:
        size = (int(size[0]), int(size[1]))
        if size[0] <= 0 or size[1] <= 0:
            raise ValueError(f"size must be positive, got {size}")
    src, name = _source(path_or_bytes)
    limit = _limit(max_pixels)
    if _native is not None:
        w, h = size if size is not None else (0, 0)
        try:
            return _native.decode_pair(_native_source(src, name), ca, cb, w, h, bool(draft), limit)
        except _native.UnsupportedFormat:
            pass
        except _native.DecodeError as exc:
            raise _native_error(name, exc) from None
    return _pil_pair(src, name, mode_a, mode_b, size, draft, limit)


def _as_array(buf, name):
    if not isinstance(buf, np.ndarray) and hasattr(buf, "numpy"):  # torch CPU tensor, pinned or not
        buf = buf.numpy()
    arr = np.asarray(buf)
    if arr.dtype != np.uint8 or arr.ndim != 4 or not arr.flags.c_contiguous or not arr.flags.writeable:
        raise ValueError(
            f"{name} must be a writable C-contiguous uint8 array of shape (N, H, W, C), got {arr.dtype} {arr.shape}"
        )
    return arr


def decode_pairs_into(
    paths,
    out_a,
    out_b,
    size,
    modes=("RGB", "RGB"),
    threads: int | None = None,
    draft: bool = False,
    *,
    max_pixels: int | None = None,
):
    """Decode a batch of A|B files into out_a / out_b, shape (len(paths), h, w, C), resized to size=(w, h).

    Runs on native threads with the GIL released (one call per batch). Returns one entry per path: None on
    success, else an error message naming the file; the slots of failed items are zero-filled.
    threads=None uses every core this process may run on.
    """
    paths = [_path(p) for p in paths]
    special = {i: kind for i, kind in enumerate(map(special_file, paths)) if kind is not None}
    n = len(paths)
    tw, th = int(size[0]), int(size[1])
    ca, cb = _channels(modes[0]), _channels(modes[1])
    a, b = _as_array(out_a, "out_a"), _as_array(out_b, "out_b")
    if a.shape != (n, th, tw, ca) or b.shape != (n, th, tw, cb):
        raise ValueError(
            f"out_a / out_b must have shapes {(n, th, tw, ca)} / {(n, th, tw, cb)}, got {a.shape} / {b.shape}"
        )
    nthreads = int(threads) if threads else _cpu_count()
    limit = _limit(max_pixels)
    if _native is not None:
        # bytes: any file name, UTF-8 or not; a FIFO or device is never handed to the decoder (an empty name, which
        # fails to open at once, takes its slot, so that the batch keeps its order).
        native_paths = [b"" if i in special else os.fsencode(p) for i, p in enumerate(paths)]
        status = _native.decode_pairs_into(native_paths, a, b, tw, th, ca, cb, bool(draft), nthreads, limit)
        todo = [i for i, s in enumerate(status) if s is not None and s[0] == "unsupported" and i not in special]
        errors = [None if s is None else f"{paths[i]}: {s[1]}" for i, s in enumerate(status)]
    else:
        todo, errors = [i for i in range(n) if i not in special], [None] * n
    for i, kind in special.items():
        a[i], b[i] = 0, 0
        errors[i] = str(_not_regular(paths[i], kind))

    def pil_item(i):
        try:
            a[i], b[i] = _pil_pair(paths[i], paths[i], modes[0], modes[1], (tw, th), draft, limit)
            errors[i] = None
        except DecodeError as exc:
            a[i], b[i] = 0, 0
            errors[i] = str(exc)

    if len(todo) > 1 and nthreads > 1:  # PIL releases the GIL while decoding and resizing
        with ThreadPoolExecutor(min(nthreads, len(todo))) as pool:
            list(pool.map(pil_item, todo))
    else:
        for i in todo:
            pil_item(i)
    return errors


def crop_flip_into(src: np.ndarray, rows, xs, ys, flips, out: np.ndarray, threads: int = 1):
    """out[k] = src[rows[k], ys[k]:ys[k] + crop, xs[k]:xs[k] + crop], mirrored left-right where flips[k], for
    C-contiguous uint8 (N, H, W, C) src and (len(rows), crop, crop, C) out. Native only (backend() == "native"):
    fastpix.data.augment crops with torch otherwise."""
    if _native is None:
        raise RuntimeError("crop_flip_into needs the native extension fastpix._decode")
    _native.crop_flip_into(src, list(rows), list(xs), list(ys), [bool(f) for f in flips], out, int(threads))


def crop_flip_normalize_into(
    src: np.ndarray, rows, xs, ys, flips, table: np.ndarray, out: np.ndarray, threads: int = 1
):
    """out[k, c] = table[crop k of src, channel c] for float32 (len(rows), C, crop, crop) out: crop_flip_into's crops
    looked up in a 256-entry float32 table and split into channel planes, in one pass. Native only."""
    if _native is None:
        raise RuntimeError("crop_flip_normalize_into needs the native extension fastpix._decode")
    _native.crop_flip_normalize_into(
        src, list(rows), list(xs), list(ys), [bool(f) for f in flips], table, out, int(threads)
    )
