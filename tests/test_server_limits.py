"""Slow and stalled clients on loopback: half-sent request heads and slow bodies are dropped within the server's
deadlines, memory stays bounded meanwhile, and the others are still served. JSON bodies that do not decode answer
400."""

import os
import selectors
import socket
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra: pip install fastpix[serve]")
pytest.importorskip("uvicorn", reason="the server needs the 'serve' extra: pip install fastpix[serve]")
pytest.importorskip("prometheus_client", reason="the server needs the 'serve' extra: pip install fastpix[serve]")

from test_server import error_of, png_bytes, random_image, request

from fastpix.config import ServeConfig
from fastpix.infer.predictor import Predictor
from fastpix.infer.server import BackgroundServer, create_app
from fastpix.models import define_G

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS is read from /proc"),
]

HALF_HEADS, SLOW_BODIES = 200, 50
SENT = 2**20  # of each slow body, before it stalls
SLACK_S = 5.0  # on top of a deadline, for a busy machine: a server without the deadline never closes
HEAD = b"POST /v1/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor(define_G(3, 3, 4, "unet_32", "batch", False, backend="eager"), device="cpu")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def closed_by_server(sockets: list, deadline: float) -> dict:
    """{socket: what it received before the server closed it}, for those closed before `deadline`."""
    selector, received, closed = selectors.DefaultSelector(), {s: b"" for s in sockets}, {}
    for s in sockets:
        s.setblocking(False)
        selector.register(s, selectors.EVENT_READ)
    while len(closed) < len(sockets) and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=max(0.0, min(0.1, deadline - time.monotonic()))):
            try:
                data = key.fileobj.recv(65536)
            except ConnectionResetError:  # closed with bytes of ours unread: a reset
                data = b""
            if data:
                received[key.fileobj] += data
            else:
                closed[key.fileobj] = received[key.fileobj]
                selector.unregister(key.fileobj)
    selector.close()
    return closed


def test_half_sent_heads_and_slow_bodies_are_dropped_within_their_deadlines(predictor):
    cfg = ServeConfig(graph_size=0, header_timeout_s=1.0, body_timeout_s=2.0, max_bytes=4 * SENT)
    image = png_bytes(random_image(32, 32, 0))
    with BackgroundServer(create_app(predictor, cfg)) as server:
        url = f"{server.url}/v1/translate"
        assert request(url, image, {"Content-Type": "image/png"})[0] == 200
        baseline, peak = rss(), [rss()]
        watching = threading.Event()

        def watch():
            while not watching.wait(0.005):
                peak[0] = max(peak[0], rss())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        heads, bodies = [], []
        opened = time.monotonic()
        for _ in range(HALF_HEADS):  # the request line and a header, never the blank line that ends the head
            heads.append(socket.create_connection(("127.0.0.1", server.port)))
            heads[-1].sendall(HEAD)
        chunk = b"\0" * SENT
        for _ in range(SLOW_BODIES):  # a whole head announcing 3 MiB, then 1 MiB of it, then nothing
            bodies.append(socket.create_connection(("127.0.0.1", server.port)))
            bodies[-1].sendall(HEAD + f"Content-Length: {3 * SENT}\r\n\r\n".encode() + chunk)
        bodies_sent = time.monotonic()
        # meanwhile, a client that sends its head in pieces within the deadline, and one that is quick, are served
        polite = socket.create_connection(("127.0.0.1", server.port))
        polite.sendall(HEAD[:20])
        time.sleep(cfg.header_timeout_s / 2)
        polite.sendall(HEAD[20:] + f"Content-Length: {len(image)}\r\n\r\n".encode() + image)
        polite.settimeout(30)
        assert polite.recv(12) == b"HTTP/1.1 200"
        polite.close()
        assert request(url, image, {"Content-Type": "image/png"})[0] == 200
        heads_closed = closed_by_server(heads, opened + cfg.header_timeout_s + SLACK_S)
        bodies_closed = closed_by_server(bodies, bodies_sent + cfg.body_timeout_s + SLACK_S)
        watching.set()
        watcher.join()
        assert request(url, image, {"Content-Type": "image/png"})[0] == 200
        connections = len(server.server.server_state.connections)
    for s in heads + bodies:
        s.close()
    assert len(heads_closed) == HALF_HEADS, f"{HALF_HEADS - len(heads_closed)} half-sent heads still open"
    assert len(bodies_closed) == SLOW_BODIES, f"{SLOW_BODIES - len(bodies_closed)} slow bodies still open"
    answered = [answer for answer in bodies_closed.values() if answer]  # a reset may beat the answer to the client
    assert answered and all(answer.startswith(b"HTTP/1.1 408") for answer in answered), answered[:1]
    assert connections <= 1  # none of theirs left (at most the last request's, closing)
    # Each slow body holds what it sent until its deadline: 50 MiB in all, and no more than twice that in RSS.
    assert peak[0] - baseline < 2 * SLOW_BODIES * SENT, f"RSS grew by {(peak[0] - baseline) / 2**20:.0f} MiB"


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"image": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"image": "\xff\xfe"}',
        b"[1, 2]",
        b"null",
        b'"an image"',
        b"1e999",
    ],
)
def test_a_json_body_that_does_not_decode_to_an_object_answers_400(predictor, body):
    with BackgroundServer(create_app(predictor, ServeConfig(graph_size=0))) as server:
        status, _, answer = request(f"{server.url}/v1/translate", body, {"Content-Type": "application/json"})
    assert status == 400 and "JSON" in error_of(answer), (status, answer[:200])
