"""The HTTP server: FastAPI + uvicorn in front of one Predictor, fed by the dynamic batcher (batcher.py).

    POST /v1/translate   an image as multipart (field "image"), as JSON {"image": "<base64>"}, or as the raw body
                         (Content-Type image/*); optional "seed" (field, JSON key or query) for dropout noise.
                         Answers the translated image, PNG or JPEG by the Accept header, at the input's size.
    GET  /healthz        200 while the model worker lives (also while it warms up)
    GET  /readyz         200 once warm-up (and, on CUDA, graph capture) is done
    GET  /metrics        Prometheus text: requests by status, queue depth, batch sizes, latency histogram

Errors answer JSON {"error": "..."}: not an image or a malformed request 400, unsupported Content-Type 415, a body
over max_bytes 413, an image whose size padded to the generator's multiple is over max_pixels 413 (read from the
header, before any pixel is decoded), queue full (max_queue requests or max_queue_pixels padded pixels waiting) 503
with Retry-After, no answer within timeout_s 504. Decoding and encoding run in the request threads (at most
DECODE_SLOTS decodes at once); only the forward pass runs in the worker, and one forward pass computes at most
max_pixels padded pixels whatever its batch, so the worker is never held longer than one such pass; a request that
timed out is dropped before its batch runs. Shutdown (SIGTERM / Ctrl-C) stops accepting connections, answers every
request already received, then ends the worker.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import os
import secrets
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from fastpix.infer.batcher import Batcher, QueueFull

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
RETRY_AFTER_S = 1
DECODE_SLOTS = max(1, min(8, os.cpu_count() or 1))  # request images decoded at once, in this process
# Decoding is CPU-bound: more decodes at once than cores gain nothing, and each holds up to 3 × max_pixels bytes.
_decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)


class RequestError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# ---- metrics ---------------------------------------------------------------------------------------------------------

class Histogram:
    def __init__(self, bounds):
        self.bounds = tuple(bounds)
        self.counts = [0] * len(self.bounds)
        self.sum, self.count = 0.0, 0

    def observe(self, value: float):
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{bound:g}"}} {n}' for bound, n in zip(self.bounds, self.counts)]
        return out + [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.9g}",
                      f"{name}_count {self.count}"]


class Metrics:
    """The few series the server exports, in Prometheus' text format (version 0.0.4), written here: four series do
    not need prometheus_client, whose process-global registry would also clash when one process (a test, an
    embedding application) runs several servers."""

    def __init__(self, queue_depth):
        self.queue_depth = queue_depth
        self.lock = threading.Lock()
        self.requests: dict[int, int] = {}
        self.latency = Histogram(LATENCY_BUCKETS_S)
        self.batch_size = Histogram(BATCH_BUCKETS)

    def request(self, status: int, seconds: float):
        with self.lock:
            self.requests[status] = self.requests.get(status, 0) + 1
            self.latency.observe(seconds)

    def batch(self, size: int):
        with self.lock:
            self.batch_size.observe(size)

    def render(self) -> str:
        with self.lock:
            lines = ["# HELP fastpix_requests_total Translate requests answered, by HTTP status.",
                     "# TYPE fastpix_requests_total counter"]
            lines += [f'fastpix_requests_total{{code="{code}"}} {n}' for code, n in sorted(self.requests.items())]
            lines += ["# HELP fastpix_queue_depth Requests waiting for the model worker.",
                      "# TYPE fastpix_queue_depth gauge", f"fastpix_queue_depth {self.queue_depth()}",
                      "# HELP fastpix_batch_size Requests per forward pass.", "# TYPE fastpix_batch_size histogram",
                      *self.batch_size.lines("fastpix_batch_size"),
                      "# HELP fastpix_request_latency_seconds Time from a translate request's arrival to its answer.",
                      "# TYPE fastpix_request_latency_seconds histogram",
                      *self.latency.lines("fastpix_request_latency_seconds")]
        return "\n".join(lines) + "\n"


# ---- image codecs ----------------------------------------------------------------------------------------------------

def decode_request_image(data: bytes, input_nc: int, multiple: int, max_pixels: int):
    """Request bytes → (CHW uint8 tensor, the padded pixels its forward pass will cost); RequestError 400 / 413 for
    what cannot be served. The size is checked from the header, padded as the Predictor pads it, before any pixel
    is decoded: a 1×N strip costs a U-Net multiple×N pixels, not N."""
    import torch

    from fastpix.data.decode import DecodeError, ImageTooLarge, decode_image, image_size
    from fastpix.infer.images import padded_size

    if not data:
        raise RequestError(400, "the request holds no image data")
    try:
        w, h = image_size(data, max_pixels=max_pixels, name="the image")
    except ImageTooLarge as exc:
        raise RequestError(413, f"image too large: {exc}") from None
    except DecodeError:  # whatever the bytes are, the client sent no image
        raise RequestError(400, f"not an image: {len(data)} bytes in no format PIL reads (PNG, JPEG, BMP, TIFF, "
                                "WebP …)") from None
    ph, pw = padded_size(h, w, multiple)
    if ph * pw > max_pixels:
        raise RequestError(413, f"image is {w}x{h} = {w * h} pixels, which the generator pads to {pw}x{ph} = "
                                f"{pw * ph}; this server accepts at most {max_pixels} (padded)")
    try:
        with _decode_slots:
            array = decode_image(data, "L" if input_nc == 1 else "RGB", max_pixels=w * h, name="image")
    except DecodeError as exc:  # truncated or corrupt pixel data
        raise RequestError(400, f"the {w}x{h} image cannot be decoded (corrupt or truncated?): "
                                f"{str(exc).removeprefix('image: ')}") from None
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


# ---- request parsing -------------------------------------------------------------------------------------------------

async def read_body(request, max_bytes: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise RequestError(413, f"request body is {length} bytes; this server accepts at most {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked uploads carry no length: count as they come
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, f"request body exceeds {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _seed(value) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RequestError(400, f"seed must be an integer, got {str(value)[:40]!r}") from None


async def image_and_seed(request, body: bytes) -> tuple[bytes, int | None]:
    """The image bytes and the optional seed of a multipart, JSON or raw-image request."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    seed = request.query_params.get("seed")
    if content_type == "multipart/form-data":
        async def replay():  # the body was read (and size-checked) already: hand it to the form parser
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form()
        except Exception as exc:  # noqa: BLE001 - malformed multipart
            raise RequestError(400, f"malformed multipart body: {exc}") from exc
        try:
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise RequestError(400, "multipart request without a file field named 'image'")
            return await upload.read(), _seed(form.get("seed", seed))
        finally:
            await form.close()  # large uploads spill to temporary files
    if content_type == "application/json":
        try:
            payload = json.loads(body)
            encoded = payload["image"]
            return base64.b64decode(encoded, validate=True), _seed(payload.get("seed", seed))
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise RequestError(400, 'JSON requests must be {"image": "<base64 image bytes>"} (optional "seed"): '
                                    f"{type(exc).__name__}: {exc}") from exc
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return body, _seed(seed)
    raise RequestError(415, f"Content-Type {content_type or '(none)'!r}: send multipart/form-data with a file "
                            "field 'image', application/json {\"image\": base64}, or the image itself as image/*")


# ---- the application -------------------------------------------------------------------------------------------------

def create_app(predictor, cfg=None):
    """A FastAPI app serving `predictor` (norm_mode 'instance' or 'running') with the limits of a ServeConfig."""
    from fastpix.config import ServeConfig

    cfg = cfg or ServeConfig()
    if predictor.norm_mode == "batch":
        raise ValueError("norm_mode 'batch' makes a request's output depend on the other requests in its batch; "
                         "serve with norm_mode 'instance' (the paper's protocol at batch 1) or 'running'")
    warmup = (cfg.graph_size, cfg.graph_size) if cfg.graph_size else None
    batcher = Batcher(predictor, cfg.max_batch_size, cfg.max_wait_ms / 1000, cfg.max_queue, warmup,
                      max_batch_pixels=cfg.max_pixels, max_queue_pixels=cfg.max_queue_pixels)  # see the module doc
    metrics = Metrics(batcher.queue.qsize)
    batcher.on_batch = metrics.batch

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await run_in_threadpool(batcher.stop, cfg.timeout_s)

    app = FastAPI(title="fastpix", lifespan=lifespan)
    app.state.batcher, app.state.metrics, app.state.config = batcher, metrics, cfg

    def error(status: int, message: str, headers=None):
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def translate(request: Request, started: float):
        if batcher.error:
            return error(503, batcher.error)
        body = await read_body(request, cfg.max_bytes)
        data, seed = await image_and_seed(request, body)
        image, pixels = await run_in_threadpool(decode_request_image, data, predictor.input_nc, predictor.multiple,
                                                cfg.max_pixels)
        if predictor.dropout and seed is None:
            seed = secrets.randbits(63)  # picked here, so that the answer can name it
        remaining = cfg.timeout_s - (time.perf_counter() - started)
        try:
            job = batcher.submit(image, seed, pixels, deadline=time.monotonic() + remaining)
        except QueueFull as exc:
            return error(503, f"server busy: {exc}; retry later", {"Retry-After": str(RETRY_AFTER_S)})
        try:
            output = await asyncio.wait_for(asyncio.wrap_future(job.future), max(remaining, 0.0))
        except asyncio.TimeoutError:  # wait_for cancels the future (and its deadline passed): the worker skips it
            return error(504, f"no result within {cfg.timeout_s:g} s (queue depth {batcher.queue.qsize()})")
        fmt = output_format(request.headers.get("accept"))
        encoded = await run_in_threadpool(encode_image, output, fmt)
        headers = {"X-Fastpix-Batch-Size": str(job.batch_size)}
        if predictor.dropout:
            headers["X-Fastpix-Seed"] = str(seed)
        return Response(encoded, media_type=f"image/{fmt.lower()}", headers=headers)

    @app.post("/v1/translate")
    async def translate_endpoint(request: Request):
        started = time.perf_counter()
        try:
            response = await translate(request, started)
        except RequestError as exc:
            response = error(exc.status, exc.message, exc.headers)
        except Exception as exc:  # noqa: BLE001 - the model failed on this request; the server goes on
            response = error(500, f"{type(exc).__name__}: {exc}")
        metrics.request(response.status_code, time.perf_counter() - started)
        return response

    @app.get("/healthz")
    async def healthz():
        if batcher.error or not batcher.alive:
            return error(503, batcher.error or "the model worker has stopped")
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if batcher.ready.is_set() and batcher.alive:
            return {"ready": True, "runtime": batcher.predictor.description}
        return JSONResponse({"ready": False, "reason": batcher.error or "warming up"}, status_code=503)

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def run(app, host: str, port: int, graceful_timeout_s: float):
    """Serve in this thread until SIGINT/SIGTERM (the CLI)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=graceful_timeout_s, log_level="info")


class BackgroundServer:
    """uvicorn serving an app from a background thread, for tests, benchmarks and embedding applications.

    with BackgroundServer(app) as server: requests to server.url (port 0 picks a free port).
    stop() is the graceful shutdown: no new connections, requests already received are answered.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, graceful_timeout_s: float = 30.0):
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                                timeout_graceful_shutdown=graceful_timeout_s)
        self.server = uvicorn.Server(config)
        self.app = app
        self.host = host
        self.port = None
        self._thread = threading.Thread(target=self.server.run, name="fastpix-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the server on {self.host} did not start (see the log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the server did not start within {timeout_s} s")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout_s: float = 60.0):
        self.server.should_exit = True
        self._thread.join(timeout_s)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
