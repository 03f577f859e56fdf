"""The HTTP server: FastAPI + uvicorn in front of one Predictor, fed by the dynamic batcher (fastpix/infer/batcher.py).

    POST /v1/translate   an image as multipart (field "image"), as JSON {"image": "<base64>"}, or as the raw body
                         (Content-Type image/*); optional "seed" (field, JSON key or query) for dropout noise.
                         Answers the translated image, PNG or JPEG by the Accept header, at the input's size.
    GET  /healthz        200 while the model worker lives (also while it warms up)
    GET  /readyz         200 once warm-up (and, where the predictor runs CUDA graphs, their capture) is done
    GET  /metrics        Prometheus text: requests by status, queue depth, batch sizes, latency histogram
    GET  /               the draw page: draw, upload or pick an example, and see the translation live (page.py)
    GET  /v1/info        the model, its runtime, the canvas size and the limits, for the page
    GET  /v1/examples/i  example i of --examples: input | target at the canvas size, PNG

Errors answer JSON {"error": "..."}: not an image or a malformed request 400 (JSON bodies included: not UTF-8, not
JSON, too deeply nested, not an object), unsupported Content-Type 415, a body over max_bytes 413, a body not whole
within body_timeout_s 408, an image whose size padded to the generator's multiple is over max_pixels 413 (read from
the header, before any pixel is decoded), queue full (max_queue requests or max_queue_pixels padded pixels waiting)
503 with Retry-After, no answer within timeout_s 504, an unexpected failure (the model's included) 500 with its
traceback in the log. Connections: a request head not whole within header_timeout_s closes its connection, and at
most limit_concurrency connections and requests are served at once (http.py).

Decoding and encoding run in the request threads (at most codecs.DECODE_SLOTS decodes at once per app); only the
forward pass runs in the worker, and one forward pass computes at most max_pixels padded pixels whatever its batch,
so the worker is never held longer than one such pass; a request that timed out is dropped before its batch runs.
Shutdown (SIGTERM / Ctrl-C) stops accepting connections, answers every request already received, then ends the
worker.

    app.py      create_app: the batcher, the metrics, the handlers, the lifespan that runs the worker
    routes.py   the routes, and the dependencies that hand them the app's state
    inputs.py   a translate request's image bytes and seed, from multipart, JSON or a raw body
    codecs.py   request bytes to the Predictor's input, its output to PNG/JPEG
    metrics.py  the Prometheus metrics, one registry per app
    page.py     the draw page (static/draw.{html,css,js}) and its routes; examples.py its examples
    http.py     what the study server shares: JSON errors, body and head deadlines, uvicorn with those limits
"""

from fastpix.infer.server.app import create_app
from fastpix.infer.server.codecs import output_format
from fastpix.infer.server.http import BackgroundServer, run

__all__ = ["BackgroundServer", "create_app", "output_format", "run"]
