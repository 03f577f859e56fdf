"""A loopback HTTP server for the download tests: files the tests generate, served from 127.0.0.1 on a free port,
with the faults a real network has (a connection cut half-way, no Range support, a short body, no length)."""

from __future__ import annotations

import contextlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Mirror:
    """files: URL path -> bytes. cut_after: on the first request of each path, send the headers of the whole answer
    but only this many body bytes, then close. ranges: answer Range requests with 206 (else ignore them: 200).
    short_by: every answer announces this many bytes more than it sends. length: send Content-Length at all."""

    def __init__(
        self,
        files: dict[str, bytes],
        cut_after: int | None = None,
        ranges: bool = True,
        short_by: int = 0,
        length: bool = True,
    ):
        self.files, self.cut_after, self.ranges = files, cut_after, ranges
        self.short_by, self.length = short_by, length
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()

    def first_request(self, path: str) -> bool:
        with self.lock:
            return sum(p == path for p, _ in self.requests) == 1


def _handler(mirror: Mirror):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one answer per connection: a body may end where the connection does

        def log_message(self, *args):
            pass

        def do_GET(self):
            with mirror.lock:
                mirror.requests.append((self.path, self.headers.get("Range")))
            body = mirror.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match and mirror.ranges and int(match[1]) < len(body):
                start = int(match[1])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            part = body[start:]
            if mirror.length:
                self.send_header("Content-Length", str(len(part) + mirror.short_by))
            self.end_headers()
            if mirror.cut_after is not None and mirror.first_request(self.path):
                part = part[: mirror.cut_after]
            with contextlib.suppress(ConnectionError):
                self.wfile.write(part)

    return Handler


@contextlib.contextmanager
def serve(mirror: Mirror):
    """The server's base URL (http://127.0.0.1:<port>) while the block runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(mirror))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
