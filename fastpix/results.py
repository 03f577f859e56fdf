"""The results page of `fastpix test`: <dir>/index.html and <dir>/images/<stem>_<label>.png, as the reference."""

from __future__ import annotations

import html
import os
from urllib.parse import quote

from PIL import Image


def save_png(array, path, aspect_ratio: float = 1.0):
    """A uint8 HWC array as PNG; aspect_ratio != 1: resized first, as the reference's test --aspect_ratio does."""
    image = Image.fromarray(array)
    (image if aspect_ratio == 1.0 else aspect_resized(image, aspect_ratio)).save(path)


def _text(s: str) -> str:
    """s for the page: bytes of a file name that are not UTF-8 (kept by Python as surrogates) shown as U+FFFD."""
    return html.escape(os.fsencode(s).decode("utf-8", "replace") if isinstance(s, str) else str(s))


def _href(src: str) -> str:
    """A link to the file src names, byte for byte, whatever its encoding: percent-encoded."""
    return html.escape(quote(os.fsencode(src)))


def write_index(
    folder: str, title: str, rows: list[tuple[str, list[tuple[str, str]]]], width: int = 256, header_html: str = ""
):
    """rows: (heading, [(label, image file relative to folder), ...]); one heading and one row of images each."""
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_text(title)}</title></head><body>",
        f"<h1>{_text(title)}</h1>",
        header_html,
    ]
    for heading, images in rows:
        parts.append(f"<h3>{_text(heading)}</h3><table><tr>")
        for label, src in images:
            parts.append(
                f"<td style='text-align:center'><a href='{_href(src)}'><img src='{_href(src)}' "
                f"style='width:{width}px'></a><br>{_text(label)}</td>"
            )
        parts.append("</tr></table>")
    parts.append("</body></html>")
    with open(os.path.join(folder, "index.html"), "w", encoding="utf-8") as f:
        f.write("\n".join(parts))


def aspect_resized(image: Image.Image, aspect_ratio: float) -> Image.Image:
    """The reference's test --aspect_ratio (util.save_image): height/width = aspect_ratio (bicubic), with its
    arithmetic: for ratio > 1 the height becomes int(width * ratio), else the width int(height / ratio)."""
    w, h = image.size
    size = (h, int(w * aspect_ratio)) if aspect_ratio > 1.0 else (int(h / aspect_ratio), w)
    return image.resize(size, Image.Resampling.BICUBIC)
