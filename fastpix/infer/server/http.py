"""What fastpix's two HTTP servers (`fastpix serve` and `fastpix study serve`) share: JSON errors, bounded request
bodies and heads, and uvicorn run with those limits (in this thread, or in the background for tests and embedding).

Errors: a client's mistake is raised as FastAPI's HTTPException and answered JSON {"error": "<detail>"} with its
status; anything else is a bug (or the machine failing): answered 500 with a generic JSON error, and re-raised by
Starlette so that uvicorn logs it with its traceback.

Slow clients (the limits of config.HttpServerConfig, which both servers' configs extend): uvicorn bounds the size
of a request head (h11: 16 KiB) and the number of connections (limit_concurrency), but neither how long a client
may take to send its head nor its body. HeadDeadlineProtocol closes a connection whose head is not whole within
header_timeout_s; BodyLimits answers a body not whole within body_timeout_s with 408 (and closes the connection),
one over max_bytes with 413. A stalled client thus holds its socket, its slot and what it sent for a bounded time.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

E = TypeVar("E", bound=Exception)
# nginx's name for "the client closed the connection before the answer": nobody receives it, the metrics count it.
CLIENT_CLOSED = 499


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def http_error(request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), exc.headers)


async def unexpected_error(request, exc: Exception) -> JSONResponse:
    # Starlette re-raises exc once this answer is sent: uvicorn logs it with its traceback.
    return error_response(500, "internal server error: the server's log has the details")


async def client_gone(request, exc: ClientDisconnect) -> Response:
    return Response(status_code=CLIENT_CLOSED)


def add_error_handlers(app: FastAPI):
    """JSON errors for HTTPException (ours, and the framework's 404/405), 500 for anything unexpected."""
    add_error_handler(app, StarletteHTTPException, http_error)
    add_error_handler(app, ClientDisconnect, client_gone)
    add_error_handler(app, Exception, unexpected_error)


def add_error_handler(app: FastAPI, error: type[E], handler: Callable[[Request, E], Awaitable[Response]]):
    """app.add_exception_handler, typed: Starlette annotates every handler as taking any Exception, though it calls
    each only with the class it was registered for."""
    app.add_exception_handler(error, handler)  # type: ignore[arg-type]


def json_object(body: bytes, hint: str = "") -> dict:
    """The JSON object a request body holds; 400 for anything else (not UTF-8, not JSON, nested deeper than the parser
    goes, JSON but not an object), `hint` appended to the error."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = "nested too deeply" if isinstance(exc, RecursionError) else f"{type(exc).__name__}: {exc}"
        raise HTTPException(400, f"the body is not JSON ({reason[:200]}){hint}") from None
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
        raise HTTPException(400, f"the body is JSON but not an object ({kind}){hint}")
    return value


class BodyLimits:
    """ASGI middleware bounding every request body in size, max_bytes (413: from Content-Length before a byte is read,
    else counted as chunks arrive), and in time, timeout_s from its head (408, and the connection is closed). Both are
    raised where the app reads the body, so that the app's handlers answer them and its metrics count them."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            receive = self.bounded(receive, Headers(scope=scope).get("content-length"))
        await self.app(scope, receive, send)

    def bounded(self, receive, declared: str | None):
        deadline = time.monotonic() + self.timeout_s
        received, complete = 0, False

        async def receive_within_limits():
            nonlocal received, complete
            if complete:  # once the body is in, a receive waits for the client to leave: that has no deadline
                return await receive()
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise HTTPException(
                    413, f"request body is {declared} bytes; this server accepts at most {self.max_bytes}"
                )
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                raise HTTPException(
                    408, f"the request body did not arrive within {self.timeout_s:g} s", headers={"Connection": "close"}
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise HTTPException(413, f"request body exceeds {self.max_bytes} bytes")
            return message

        return receive_within_limits


class HeadDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol (h11) with a deadline on every request head.

    uvicorn's keep-alive timer restarts on every byte received and does not run before a connection's first request,
    so a client that sends half a head, or a byte a second, holds its connection for ever. Here a deadline runs
    whenever the connection is not serving a request (from when it opens, and from each answer's end): a connection
    whose next head is not whole by then is closed. h11 rather than httptools, which the 'serve' extra does not
    install."""

    def __init__(self, *args, header_timeout_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.head_deadline: asyncio.TimerHandle | None = None

    @property
    def serving(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def start_head_deadline(self):
        self.stop_head_deadline()
        self.head_deadline = self.loop.call_later(self.header_timeout_s, self.head_timed_out)

    def stop_head_deadline(self):
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def head_timed_out(self):
        self.head_deadline = None
        if not self.serving and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport):
        super().connection_made(transport)
        self.start_head_deadline()

    def data_received(self, data: bytes):
        super().data_received(data)
        if self.serving:  # a whole head arrived: its request is answered under the app's own limits
            self.stop_head_deadline()

    def on_response_complete(self):
        super().on_response_complete()  # may start serving a pipelined request
        if not self.transport.is_closing() and not self.serving:
            self.start_head_deadline()

    def connection_lost(self, exc):
        self.stop_head_deadline()
        super().connection_lost(exc)


def uvicorn_config(app: FastAPI, host: str, port: int, graceful_timeout_s: float, log_level: str):
    """uvicorn's Config for `app` with the connection limits of the config it was created with (app.state.config)."""
    import uvicorn

    cfg = app.state.config
    # uvicorn builds each connection's protocol as http(config=, server_state=, app_state=, _loop=).
    # (uvicorn's annotations name only classes for http, where a factory is what it calls, and whole seconds for
    # timeout_graceful_shutdown, which it hands to asyncio.wait_for: any number.)
    protocol: Any = functools.partial(HeadDeadlineProtocol, header_timeout_s=cfg.header_timeout_s)
    graceful: Any = graceful_timeout_s
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        ws="none",
        log_level=log_level,
        timeout_keep_alive=cfg.keep_alive_s,
        limit_concurrency=cfg.limit_concurrency,
        timeout_graceful_shutdown=graceful,
    )


def run(app: FastAPI, host: str, port: int, graceful_timeout_s: float = 10.0):
    """Serve in this thread until SIGINT/SIGTERM (the CLI): stop accepting, answer what was received, return."""
    import uvicorn

    uvicorn.Server(uvicorn_config(app, host, port, graceful_timeout_s, "info")).run()


class BackgroundServer:
    """uvicorn serving an app from a background thread, for tests, benchmarks and embedding applications.

    with BackgroundServer(app) as server: requests to server.url (port 0 picks a free port).
    stop() is the graceful shutdown: no new connections, requests already received are answered.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, graceful_timeout_s: float = 30.0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn_config(app, host, port, graceful_timeout_s, "warning"))
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
