"""The HTTP server, started for real on a loopback port: answers, batching, every error case, graceful shutdown."""

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra: pip install fastpix[serve]")
pytest.importorskip("uvicorn", reason="the server needs the 'serve' extra: pip install fastpix[serve]")
pytest.importorskip("prometheus_client", reason="the server needs the 'serve' extra: pip install fastpix[serve]")

from tiny_models import perturb_batchnorms

from fastpix.config import ServeConfig
from fastpix.infer.predictor import Predictor
from fastpix.infer.server import BackgroundServer, create_app, output_format
from fastpix.models import define_G
from fastpix.store.weights import save_weights

TIMEOUT_S = 30  # every wait in this file is bounded

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_generator():
    torch.manual_seed(0)
    return perturb_batchnorms(define_G(3, 3, 4, "unet_32", "batch", False, backend="eager"))


@pytest.fixture(scope="module")
def predictor():
    return Predictor(tiny_generator(), device="cpu")


def random_image(w, h, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(fields: dict) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request; bytes values are sent as files."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        if isinstance(value, bytes):
            head = (
                f'Content-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
                "Content-Type: image/png\r\n\r\n"
            )
            parts.append(f"--{boundary}\r\n{head}".encode() + value + b"\r\n")
        else:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request(url, body=None, headers=None, method=None):
    """(status, headers, body) of one HTTP request, error statuses included."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def translate(server, image_bytes, headers=None):
    body, content_type = multipart({"image": image_bytes})
    return request(f"{server.url}/v1/translate", body, {"Content-Type": content_type, **(headers or {})})


def decoded(body) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def assert_same_image(got: np.ndarray, expected: np.ndarray):
    """Equal up to the last bit of a float: a batched conv may round differently, which can move a pixel across
    a uint8 step; more than that is an error."""
    assert got.shape == expected.shape
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


def error_of(body) -> str:
    return json.loads(body)["error"]


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent), parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


class GatedPredictor:
    """The real predictor behind a gate the test opens: it holds the worker so that requests pile up."""

    def __init__(self, predictor, fail_width=None):
        self.predictor = predictor
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.held = 0  # images in the call being held
        self.fail_width = fail_width

    def __getattr__(self, name):
        return getattr(self.predictor, name)

    def run(self, requests, **kwargs):
        self.held = len(requests)
        self.entered.set()
        assert self.gate.wait(TIMEOUT_S)
        if any(r.image.shape[-1] == self.fail_width for r in requests):
            raise RuntimeError(f"the model cannot take width {self.fail_width}")
        return self.predictor.run(requests, **kwargs)


def wait_until(condition, what):
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def in_threads(calls):
    """Run each call in its own thread at once; their results in order."""
    results = [None] * len(calls)

    def run(i):
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    return threads, results


def join(threads):
    for t in threads:
        t.join(TIMEOUT_S)
        assert not t.is_alive()


# ---- answers ---------------------------------------------------------------------------------------------------------


def test_translate_answers_the_predictors_image_in_every_request_form(predictor):
    image = random_image(45, 30, 1)
    expected = predictor(image, output_type="np")
    with BackgroundServer(create_app(predictor, ServeConfig(graph_size=32))) as server:
        wait_until(lambda: request(f"{server.url}/readyz")[0] == 200, "readiness")
        assert request(f"{server.url}/healthz")[0] == 200
        status, headers, body = translate(server, png_bytes(image))
        assert status == 200 and headers["Content-Type"] == "image/png" and body.startswith(b"\x89PNG")
        assert_same_image(decoded(body), expected)
        payload = json.dumps({"image": base64.b64encode(png_bytes(image)).decode()}).encode()
        status, _, body = request(f"{server.url}/v1/translate", payload, {"Content-Type": "application/json"})
        assert status == 200
        assert_same_image(decoded(body), expected)
        status, _, body = request(f"{server.url}/v1/translate", png_bytes(image), {"Content-Type": "image/png"})
        assert status == 200
        assert_same_image(decoded(body), expected)
        status, headers, body = translate(server, png_bytes(image), {"Accept": "image/jpeg"})
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
        assert np.abs(decoded(body).astype(int) - expected).mean() < 8  # JPEG quality 95
        metrics = request(f"{server.url}/metrics")[2].decode()
    assert metric(metrics, "fastpix_requests_total", code="200") == 4
    assert metric(metrics, "fastpix_queue_depth") == 0 and "fastpix_queue_depth 0" in metrics
    assert metric(metrics, "fastpix_batch_size_bucket", le="1.0") == 4
    assert metric(metrics, "fastpix_request_latency_seconds_count") == 4
    assert "# TYPE fastpix_request_latency_seconds histogram" in metrics


def test_two_apps_in_one_process_count_their_own_requests():
    first, second = (Predictor(tiny_generator(), device="cpu") for _ in range(2))  # one model worker each
    image = png_bytes(random_image(32, 32, 4))
    with (
        BackgroundServer(create_app(first, ServeConfig(graph_size=0))) as a,
        BackgroundServer(create_app(second, ServeConfig(graph_size=0))) as b,
    ):
        for server, n in ((a, 2), (b, 1)):
            for _ in range(n):
                assert translate(server, image)[0] == 200
        assert request(f"{b.url}/v1/translate", b"", {"Content-Type": "text/plain"})[0] == 415
        texts = [request(f"{server.url}/metrics")[2].decode() for server in (a, b)]
    assert [metric(text, "fastpix_requests_total", code="200") for text in texts] == [2, 1]
    assert [metric(text, "fastpix_requests_total", code="415") for text in texts] == [0, 1]
    assert [metric(text, "fastpix_batch_size_count") for text in texts] == [2, 1]


def test_accept_header_chooses_the_format():
    assert output_format(None) == "PNG"
    assert output_format("*/*") == "PNG"
    assert output_format("image/jpeg") == "JPEG"
    assert output_format("image/png;q=0.5, image/jpeg;q=0.9") == "JPEG"
    assert output_format("image/jpeg;q=0, image/png") == "PNG"
    assert output_format("text/html") == "PNG"


def test_64_concurrent_requests_are_batched_and_each_equals_its_image_alone(predictor):
    gated = GatedPredictor(predictor)
    images = [random_image(32 + 8 * (i % 3), 32 + 4 * (i % 2), 100 + i) for i in range(64)]
    expected = [predictor(image, output_type="np") for image in images]
    cfg = ServeConfig(max_batch_size=16, graph_size=0)
    with BackgroundServer(create_app(gated, cfg)) as server:
        batcher = server.app.state.batcher
        wait_until(batcher.ready.is_set, "warm-up")
        threads, results = in_threads([lambda i=i: translate(server, png_bytes(images[i])) for i in range(64)])
        # the first batch (whatever had arrived when the idle worker woke) holds the worker; the rest queue
        wait_until(lambda: gated.entered.is_set() and gated.held + batcher.queue.qsize() == 64, "64 requests in")
        first = gated.held
        gated.gate.set()
        join(threads)
    sizes = sorted(int(headers["X-Fastpix-Batch-Size"]) for _, headers, _ in results)
    batches = [first] + [min(16, 64 - first - start) for start in range(0, 64 - first, 16)]
    assert sizes == sorted(b for b in batches for _ in range(b))  # batches close at max_batch_size
    for (status, _, body), image in zip(results, expected):
        assert status == 200
        assert_same_image(decoded(body), image)


def test_dropout_is_seeded_per_request():
    G = define_G(3, 3, 4, "unet_64", "batch", True, backend="eager")  # unet_64: the first size with dropout
    predictor = Predictor(G, device="cpu", dropout=True)
    image = random_image(64, 64, 5)
    with BackgroundServer(create_app(predictor, ServeConfig(graph_size=0))) as server:
        status, headers, body = request(
            f"{server.url}/v1/translate?seed=42", png_bytes(image), {"Content-Type": "image/png"}
        )
        assert status == 200 and headers["X-Fastpix-Seed"] == "42"
        assert_same_image(decoded(body), predictor([image], seed=[42], output_type="np")[0])
        status, headers, body = translate(server, png_bytes(image))
        seed = int(headers["X-Fastpix-Seed"])  # picked by the server, and reproducible with it
        assert_same_image(decoded(body), predictor([image], seed=[seed], output_type="np")[0])


# ---- errors ----------------------------------------------------------------------------------------------------------


def test_bad_requests_are_named_and_the_server_goes_on(predictor):
    image = png_bytes(random_image(32, 32, 2))
    cfg = ServeConfig(graph_size=0, max_bytes=50_000, max_pixels=200 * 200)
    with BackgroundServer(create_app(predictor, cfg)) as server:
        url = f"{server.url}/v1/translate"
        status, _, body = translate(server, b"hello, not an image")
        assert status == 400 and "not an image" in error_of(body)
        status, _, body = translate(server, image[:60])
        assert status == 400 and "cannot be decoded" in error_of(body)
        status, _, body = request(url, b'{"image": "***"}', {"Content-Type": "application/json"})
        assert status == 400 and "base64" in error_of(body)
        status, _, body = request(url, b"{not json", {"Content-Type": "application/json"})
        assert status == 400 and "JSON" in error_of(body)
        body, content_type = multipart({"picture": image})
        status, _, body = request(url, body, {"Content-Type": content_type})
        assert status == 400 and "'image'" in error_of(body)
        status, _, body = request(f"{url}?seed=abc", image, {"Content-Type": "image/png"})
        assert status == 400 and "seed" in error_of(body)
        status, _, body = request(url, image, {"Content-Type": "text/plain"})
        assert status == 415 and "multipart/form-data" in error_of(body)
        status, _, body = translate(server, image + b"\0" * 60_000)
        assert status == 413 and "50000" in error_of(body)
        status, _, body = translate(server, png_bytes(Image.new("RGB", (400, 101))))
        assert status == 413 and "400x101" in error_of(body)
        assert request(url, method="GET")[0] == 405
        status, _, body = translate(server, image)
        assert status == 200
        metrics = request(f"{server.url}/metrics")[2].decode()
    for code, n in [(400, 6), (413, 2), (415, 1), (200, 1)]:
        assert metric(metrics, "fastpix_requests_total", code=str(code)) == n


def test_a_failing_request_fails_alone_with_a_generic_500_and_its_traceback_in_the_log(predictor, capfd):
    gated = GatedPredictor(predictor, fail_width=40)
    with BackgroundServer(create_app(gated, ServeConfig(graph_size=0))) as server:
        batcher = server.app.state.batcher
        wait_until(batcher.ready.is_set, "warm-up")
        images = [random_image(w, 32, i) for i, w in enumerate([32, 40, 48, 32])]
        threads, results = in_threads([lambda i=i: translate(server, png_bytes(images[i])) for i in range(4)])
        wait_until(lambda: gated.entered.is_set() and gated.held + batcher.queue.qsize() == 4, "4 requests in")
        gated.gate.set()
        join(threads)
        assert [status for status, _, _ in results] == [200, 500, 200, 200]
        assert error_of(results[1][2]).startswith("internal server error")  # a bug's details are not the client's
        assert translate(server, png_bytes(images[0]))[0] == 200
    log = capfd.readouterr().err
    assert "Traceback" in log and "RuntimeError: the model cannot take width 40" in log


class BrokenWarmup:
    """The real predictor, whose warm-up fails (as it does when the device has no memory left)."""

    def __init__(self, predictor):
        self.predictor = predictor

    def __getattr__(self, name):
        return getattr(self.predictor, name)

    def warmup(self, size):
        raise RuntimeError("no device memory left for the warm-up")


def test_a_failed_warm_up_answers_503_naming_it(predictor):
    with BackgroundServer(create_app(BrokenWarmup(predictor), ServeConfig(graph_size=0))) as server:
        wait_until(lambda: not server.app.state.batcher.alive, "the worker to give up")
        status, _, body = translate(server, png_bytes(random_image(32, 32, 0)))
        assert status == 503 and "warm-up failed: RuntimeError: no device memory left" in error_of(body)
        assert request(f"{server.url}/healthz")[0] == 503
        status, _, body = request(f"{server.url}/readyz")
        assert status == 503 and "warm-up failed" in json.loads(body)["reason"]


def test_full_queue_answers_503_with_retry_after_and_slow_answers_504(predictor):
    gated = GatedPredictor(predictor)
    with BackgroundServer(create_app(gated, ServeConfig(graph_size=0, max_queue=2, timeout_s=1.0))) as server:
        batcher = server.app.state.batcher
        wait_until(batcher.ready.is_set, "warm-up")
        image = png_bytes(random_image(32, 32, 3))
        threads, results = in_threads([lambda: translate(server, image)])
        wait_until(gated.entered.is_set, "the worker to hold the first request")
        more, more_results = in_threads([lambda: translate(server, image) for _ in range(2)])
        wait_until(lambda: batcher.queue.qsize() == 2, "a full queue")
        status, headers, body = translate(server, image)
        assert status == 503 and headers["Retry-After"] == "1" and "busy" in error_of(body)
        join(threads + more)  # the worker is still held: all three run out of time
        assert [r[0] for r in results + more_results] == [504, 504, 504]
        assert "1 s" in error_of(results[0][2])
        gated.gate.set()
        wait_until(lambda: batcher.queue.qsize() == 0, "the worker to pass over the abandoned requests")
        assert translate(server, image)[0] == 200
        metrics = request(f"{server.url}/metrics")[2].decode()
    assert metric(metrics, "fastpix_batch_size_count") == 2  # the held one and the last: the abandoned two never ran


# ---- shutdown --------------------------------------------------------------------------------------------------------


def test_graceful_shutdown_answers_the_requests_in_flight(predictor):
    gated = GatedPredictor(predictor)
    server = BackgroundServer(create_app(gated, ServeConfig(graph_size=0))).start()
    batcher = server.app.state.batcher
    wait_until(batcher.ready.is_set, "warm-up")
    images = [random_image(32, 32, 10 + i) for i in range(5)]
    threads, results = in_threads([lambda i=i: translate(server, png_bytes(images[i])) for i in range(5)])
    wait_until(lambda: gated.entered.is_set() and gated.held + batcher.queue.qsize() == 5, "5 requests in")
    stopper = threading.Thread(target=server.stop)
    stopper.start()

    def refused():
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            return False
        except OSError:
            return True

    wait_until(refused, "the server to stop accepting connections")
    gated.gate.set()
    join(threads + [stopper])
    for (status, _, body), image in zip(results, images):
        assert status == 200
        assert_same_image(decoded(body), predictor(image, output_type="np"))
    assert not batcher.alive


def test_cli_serve_starts_answers_and_stops_on_sigterm(tmp_path):
    G = tiny_generator()
    save_weights(str(tmp_path / "latest_net_G.pth"), G)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastpix",
            "serve",
            "--checkpoint",
            str(tmp_path),
            "--port",
            str(port),
            "--norm-mode",
            "running",
            "--graph-size",
            "32",
            # the conftest's portable CPU defaults, which a subprocess does not see
            "--runtime",
            "eager",
            "--precision",
            "fp32",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def ready():
            assert process.poll() is None, process.stdout.read().decode()
            try:
                return request(f"{url}/readyz")[0] == 200
            except OSError:
                return False

        wait_until(ready, "the server to be ready")
        image = random_image(50, 40, 7)
        body, content_type = multipart({"image": png_bytes(image)})
        status, _, body = request(f"{url}/v1/translate", body, {"Content-Type": content_type})
        assert status == 200
        assert_same_image(decoded(body), Predictor(G, device="cpu", norm_mode="running")(image, output_type="np"))
        process.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once it has shut down gracefully
        assert process.wait(TIMEOUT_S) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT_S)
    log = process.stdout.read().decode()
    assert "Shutting down" in log and "Traceback" not in log


@pytest.mark.gpu
def test_cuda_graphs_are_captured_before_ready_and_serve_the_predictors_result():
    G = tiny_generator()
    predictor = Predictor(G, device="cuda", precision="fp32", graph_size=(32, 32), max_batch_size=16)
    image = random_image(32, 32, 9)
    with BackgroundServer(create_app(predictor, ServeConfig(graph_size=32, max_batch_size=16))) as server:
        wait_until(lambda: request(f"{server.url}/readyz")[0] == 200, "readiness")
        assert sorted(predictor.graphs.graphs) == [1, 2, 4, 8, 16]
        status, _, body = translate(server, png_bytes(image))
    assert status == 200
    expected = Predictor(G, device="cpu")(image, output_type="np")
    diff = np.abs(decoded(body).astype(int) - expected)  # cuDNN may use TF32: a grey level here and there
    assert diff.max() <= 2 and diff.mean() < 0.5
