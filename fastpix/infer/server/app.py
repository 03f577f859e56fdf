"""create_app: one Predictor behind the dynamic batcher, served by the routes of routes.py."""

from __future__ import annotations

import contextlib

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from fastpix.errors import ConfigError
from fastpix.infer.batcher import Batcher, QueueFull, WorkerStopped
from fastpix.infer.images import padded_size
from fastpix.infer.server.codecs import decode_slots
from fastpix.infer.server.http import BodyLimits, add_error_handler, add_error_handlers, error_response
from fastpix.infer.server.metrics import CountRequests, ServerMetrics
from fastpix.infer.server.page import draw_page
from fastpix.infer.server.page import router as page_router
from fastpix.infer.server.routes import router

RETRY_AFTER_S = 1


async def server_busy(request, exc: QueueFull):
    return error_response(503, f"server busy: {exc}; retry later", {"Retry-After": str(RETRY_AFTER_S)})


async def worker_stopped(request, exc: WorkerStopped):
    return error_response(503, str(exc))


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    """The batcher's worker runs while the app serves; on shutdown it answers every request queued, then ends."""
    app.state.batcher.start()
    yield
    await run_in_threadpool(app.state.batcher.stop, app.state.config.timeout_s)


def warmup_sizes(text: str | None, max_pixels: int, predictor) -> list[tuple[int, int]]:
    """--warmup-sizes ('320x240,512x384': width x height) as (h, w) sizes; one line naming the flag for a size that
    is not WxH or that the server would refuse (over --max-pixels once padded)."""
    sizes = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        w, sep, h = item.lower().partition("x")
        if not (sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
            raise ConfigError(f"--warmup-sizes: {item!r} is not WIDTHxHEIGHT in pixels (e.g. 320x240)")
        ph, pw = padded_size(int(h), int(w), predictor.multiple)
        if ph * pw > max_pixels:
            raise ConfigError(
                f"--warmup-sizes: {item} pads to {pw}x{ph} = {ph * pw} pixels, over --max-pixels {max_pixels}"
            )
        sizes.append((int(h), int(w)))
    return sizes


def create_app(predictor, cfg=None, checkpoint=None) -> FastAPI:
    """A FastAPI app serving `predictor` (norm_mode 'instance' or 'running') with the limits of a ServeConfig.
    checkpoint: where the predictor's generator came from (a store GeneratorSource), which names the model on the
    draw page and gives it the canvas size and examples' direction the run was trained with."""
    from fastpix.config import ServeConfig

    cfg = cfg or ServeConfig()
    if predictor.norm_mode == "batch":
        raise ConfigError(
            "--norm-mode batch makes a request's output depend on the other requests in its batch; "
            "serve with --norm-mode instance (the paper's protocol at batch 1) or running"
        )
    page = draw_page(predictor, cfg, checkpoint)  # ConfigError / DataError before the worker starts
    # Warm-up at the size requests are expected at, before /readyz says ready: the predictor captures its CUDA
    # graphs (graph_size) where it runs them; otherwise the draw page's canvas (the run's crop by default) is that
    # size, and the compiled runtime starts building its packages for it (in the background: nothing waits for them).
    # One forward pass computes at most max_pixels padded pixels whatever its batch: the worker is never held
    # longer than one such pass.
    # --warmup-sizes adds sizes whose packages start building at once too (their first requests then run compiled
    # once built, rather than asking for a build themselves).
    if predictor.plan.cuda_graphs:
        warmup = [(cfg.graph_size, cfg.graph_size)]
    else:
        warmup = [(page.canvas_size, page.canvas_size), *warmup_sizes(cfg.warmup_sizes, cfg.max_pixels, predictor)]
    batcher = Batcher(
        predictor,
        cfg.max_batch_size,
        cfg.max_wait_ms / 1000,
        cfg.max_queue,
        warmup,
        max_batch_pixels=cfg.max_pixels,
        max_queue_pixels=cfg.max_queue_pixels,
    )
    metrics = ServerMetrics(batcher.queue.qsize)
    batcher.on_batch = metrics.batch
    app = FastAPI(title="fastpix", lifespan=lifespan)
    app.state.batcher, app.state.config, app.state.metrics, app.state.page = batcher, cfg, metrics, page
    app.state.decode_slots = decode_slots()
    app.include_router(router)
    app.include_router(page_router)
    add_error_handlers(app)
    add_error_handler(app, QueueFull, server_busy)
    add_error_handler(app, WorkerStopped, worker_stopped)
    app.add_middleware(BodyLimits, max_bytes=cfg.max_bytes, timeout_s=cfg.body_timeout_s)
    app.add_middleware(CountRequests, metrics=metrics, method="POST", path="/v1/translate")
    return app
