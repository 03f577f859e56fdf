"""The server's routes. Each app's own objects (its batcher, config, metrics, decode slots) are on app.state and reach
a route through a dependency; errors are raised (HTTPException, QueueFull, WorkerStopped) and answered by the app's
exception handlers (app.py)."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State

from fastpix.infer.batcher import Batcher
from fastpix.infer.server.codecs import decode_request_image, encode_image, output_format
from fastpix.infer.server.http import error_response
from fastpix.infer.server.inputs import TranslateInput, translate_input

router = APIRouter()


def app_state(request: Request) -> State:
    return request.app.state


AppState = Annotated[State, Depends(app_state)]


def working_batcher(state: AppState) -> Batcher:
    """The app's batcher; 503 when its worker could not start (a failed warm-up), before the body is read."""
    if state.batcher.error:
        raise HTTPException(503, state.batcher.error)
    return state.batcher


@router.post("/v1/translate")
async def translate(
    state: AppState,
    batcher: Annotated[Batcher, Depends(working_batcher)],
    given: Annotated[TranslateInput, Depends(translate_input)],
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    cfg, predictor = state.config, batcher.predictor
    deadline = time.monotonic() + cfg.timeout_s
    image, pixels = await run_in_threadpool(
        decode_request_image,
        given.data,
        predictor.image_channels,
        predictor.multiple,
        cfg.max_pixels,
        state.decode_slots,
    )
    seed = given.seed
    if predictor.dropout and seed is None:
        seed = secrets.randbits(63)  # picked here, so that the answer can name it
    job = batcher.submit(image, seed, pixels, deadline=deadline)  # QueueFull: 503 (app.py)
    try:
        output = await asyncio.wait_for(asyncio.wrap_future(job.future), max(deadline - time.monotonic(), 0.0))
    except asyncio.TimeoutError:  # wait_for cancels the future (and its deadline passed): the worker skips it
        raise HTTPException(
            504, f"no result within {cfg.timeout_s:g} s (queue depth {batcher.queue.qsize()})"
        ) from None
    fmt = output_format(accept)
    encoded = await run_in_threadpool(encode_image, output, fmt)
    headers = {"X-Fastpix-Batch-Size": str(job.batch_size)}
    if predictor.dropout:
        headers["X-Fastpix-Seed"] = str(seed)
    return Response(encoded, media_type=f"image/{fmt.lower()}", headers=headers)


@router.get("/healthz")
async def healthz(state: AppState):
    if state.batcher.error or not state.batcher.alive:
        return error_response(503, state.batcher.error or "the model worker has stopped")
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: AppState):
    batcher = state.batcher
    if batcher.ready.is_set() and batcher.alive:
        # With the compiled runtime: which padded sizes (per batch piece) run compiled, which are being built (they
        # run eagerly meanwhile: ready does not wait for a compiler), which failed.
        return {
            "ready": True,
            "runtime": batcher.predictor.description,
            "model": batcher.predictor.model,
            "compiled": batcher.predictor.compile_status(),
        }
    return JSONResponse({"ready": False, "reason": batcher.error or "warming up"}, status_code=503)


@router.get("/metrics")
async def metrics(state: AppState):
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
