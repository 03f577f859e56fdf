"""The draw page: draw (or upload, or pick an example) on a canvas and see the model's translation live.

    GET /                     the page (static/draw.html, with draw.css and draw.js served beside it)
    GET /v1/info              what the page needs: the model and how it runs, the canvas size, the server's limits,
                              the palette, the number of examples
    GET /v1/examples/{i}      example i as the data set's aligned format: input | target at the canvas size, PNG

The page translates through POST /v1/translate like any client. It loads nothing from another origin: its script and
style are files of this server, so the Content-Security-Policy allows only the server's own origin, without
'unsafe-inline'. What the page does, and its test hooks: docs/design.md, section "The draw page".
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fastpix.errors import ConfigError, DataError
from fastpix.infer.images import padded_size
from fastpix.infer.server.examples import Examples
from fastpix.infer.server.routes import AppState
from fastpix.palette import Palette, load_palette

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
# Only this origin: no inline script or style, no other host's fonts, scripts or images, no framing, no <base>.
CSP = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}

router = APIRouter()


@dataclass(frozen=True)
class DrawPage:
    """The page's settings, decided once when the app is built."""

    canvas_size: int
    model: str
    palette: Palette | None
    examples: Examples | None


def draw_page(predictor, cfg, checkpoint=None) -> DrawPage:
    """The page's settings from a ServeConfig and the checkpoint served (a store GeneratorSource, or None): the
    canvas at --canvas-size, else the run's crop size, else 256 (shrunk to what --max-pixels accepts); the examples'
    direction by --direction, else the run's. A --canvas-size the server would refuse is a ConfigError; a palette or
    an examples folder that cannot be read, a DataError."""
    from fastpix.config import DRAW_CANVAS_SIZE

    trained = checkpoint.config if checkpoint is not None else {}
    size = cfg.canvas_size or trained.get("crop_size") or DRAW_CANVAS_SIZE
    side = padded_size(size, size, predictor.multiple)[0]
    if side * side > cfg.max_pixels:
        if cfg.canvas_size:
            raise ConfigError(
                f"--canvas-size {size}: the generator pads the canvas to {side}x{side} = {side * side} "
                f"pixels, over --max-pixels {cfg.max_pixels}; give a smaller canvas or a larger "
                "--max-pixels"
            )
        # A default canvas shrinks to the largest the server accepts (none: the page says so when it would send).
        size = max(predictor.multiple, math.isqrt(cfg.max_pixels) // predictor.multiple * predictor.multiple)
    palette = load_palette(cfg.palette) if cfg.palette else None
    examples = None
    if cfg.examples:
        direction = cfg.direction or trained.get("direction") or "AtoB"
        examples = Examples(
            cfg.examples, direction, size, labels=palette is not None, grey_input=predictor.input_nc == 1
        )
    if checkpoint is None:
        model = type(predictor.generator).__name__
    else:
        model = f"{checkpoint.run_name}/{checkpoint.stem}" + (f" ({trained['netG']})" if "netG" in trained else "")
    return DrawPage(size, model, palette, examples)


@functools.cache
def asset(name: str) -> bytes:
    with open(os.path.join(STATIC, name), "rb") as f:
        return f.read()


def asset_response(name: str) -> Response:
    return Response(asset(name), media_type=MEDIA_TYPES[os.path.splitext(name)[1]], headers=PAGE_HEADERS)


@router.get("/", include_in_schema=False)
async def page():
    return asset_response("draw.html")


@router.get("/draw.js", include_in_schema=False)
async def script():
    return asset_response("draw.js")


@router.get("/draw.css", include_in_schema=False)
async def style():
    return asset_response("draw.css")


@router.get("/favicon.ico", include_in_schema=False)
async def favicon():
    return Response(status_code=204)  # browsers ask for one; the page has none


@router.get("/v1/info")
async def info(state: AppState):
    predictor, cfg, page = state.batcher.predictor, state.config, state.page
    return {
        "model": page.model,
        "description": predictor.description,
        "device": str(predictor.device),
        "precision": predictor.precision,
        "runtime": predictor.runtime,
        "input_nc": predictor.input_nc,
        "multiple": predictor.multiple,
        "canvas_size": page.canvas_size,
        "max_pixels": cfg.max_pixels,
        "max_bytes": cfg.max_bytes,
        "palette": page.palette.as_json() if page.palette else None,
        "examples": len(page.examples) if page.examples else 0,
    }


@router.get("/v1/examples/{index}")
async def example(index: int, state: AppState):
    examples = state.page.examples
    if examples is None:
        raise HTTPException(404, "this server has no examples: start it with --examples DIR (a split)")
    if not 0 <= index < len(examples):
        raise HTTPException(
            404, f"example {index} does not exist: there are {len(examples)} (0 to {len(examples) - 1})"
        )
    try:
        png = await run_in_threadpool(examples.pair_png, index)
    except DataError as exc:  # the server's own data: the client can do nothing but pick another
        raise HTTPException(500, f"example {index} cannot be read: {exc}") from None
    return Response(png, media_type="image/png", headers={"X-Fastpix-Example": quote(examples.name(index))})
