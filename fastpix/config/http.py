"""What both HTTP servers (`fastpix serve`, `fastpix study serve`) take."""

from __future__ import annotations

from dataclasses import dataclass

from fastpix.config.fields import opt


@dataclass
class HttpServerConfig:
    """What both HTTP servers (`fastpix serve`, `fastpix study serve`) take: where to listen, and how long and how
    many clients they wait for: uvicorn's own limits, and the two read deadlines it does not have, so that slow or
    stalled clients cannot hold connections (and the memory of their bodies) for ever."""

    host: str = opt("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = opt(8000, "TCP port to listen on (0: any free port)")
    header_timeout_s: float = opt(
        10.0,
        "a connection that has not sent a whole request head (request line and "
        "headers, at most 16 KiB: h11's limit) within this many seconds of opening, or of "
        "its previous answer, is closed (uvicorn has no such limit)",
    )
    body_timeout_s: float = opt(
        30.0,
        "a request body not whole within this many seconds of its head is answered 408 "
        "and its connection closed (uvicorn has no such limit)",
    )
    keep_alive_s: int = opt(
        5, "an idle connection is closed this many seconds after its last answer (uvicorn's --timeout-keep-alive)"
    )
    limit_concurrency: int = opt(
        512,
        "connections and requests at once, at most (uvicorn's --limit-concurrency): "
        "beyond, a request is answered 503; each may hold up to --max-bytes of body while "
        "it is read",
    )
