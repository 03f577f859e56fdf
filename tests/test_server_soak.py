"""A soak of the server on loopback: a few hundred mixed good and hostile requests from many clients over a small
queue. Every bad request gets its status, every 200 equals the image's single-request result, the process's memory
stays bounded (thin strips that pad to huge sizes and bombs are refused from their headers), nothing is lost."""

import io
import os
import random
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra: pip install fastpix[serve]")
pytest.importorskip("uvicorn", reason="the server needs the 'serve' extra: pip install fastpix[serve]")
pytest.importorskip("prometheus_client", reason="the server needs the 'serve' extra: pip install fastpix[serve]")

from prometheus_client.parser import text_string_to_metric_families
from test_server import assert_same_image, decoded, error_of, request
from tiny_models import perturb_batchnorms

from fastpix.config import ServeConfig
from fastpix.data.decode import decode_image
from fastpix.infer.predictor import Predictor
from fastpix.infer.server import BackgroundServer, create_app
from fastpix.models import define_G

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS is read from /proc"),
]

CLIENTS, REQUESTS_PER_CLIENT = 12, 30
RSS_BOUND = 256 * 2**20  # over the process's RSS after warm-up; one unrefused thin strip costs GBs


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(w: int, h: int) -> bytes:
    """A 1×1 PNG whose header claims w×h."""
    data = bytearray(png(Image.new("RGB", (1, 1))))
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.done = rss(), threading.Event()

    def run(self):
        while not self.done.wait(0.002):
            self.peak = max(self.peak, rss())


def good_requests():
    """(name, body, content type, query) of images the server must answer, in sizes that pad and that do not."""
    rng = np.random.default_rng(0)
    out = []
    for w, h in [(32, 32), (17, 33), (40, 24), (64, 48)]:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        out.append((f"png{w}x{h}", png(image), "image/png", ""))
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
    out.append(("jpeg56x40", buffer.getvalue(), "image/jpeg", ""))
    return out


def bad_requests():
    """(name, body, content type, query, status, words of the error)."""
    thin = png(Image.new("RGB", (1_000_000, 1)))  # 1×1,000,000: 3 KB; padded for unet_32, 32,000,000 pixels
    truncated = png(Image.new("RGB", (32, 32), (9, 9, 9)))[:60]
    return [
        ("thin", thin, "image/png", "", 413, "pads to 1000000x32"),
        ("thin header", png_claiming(1, 16_000_000), "image/png", "", 413, "pads to"),
        ("bomb", png_claiming(50_000, 50_000), "image/png", "", 413, "too large"),
        ("garbage", b"\x89PNG but not really" * 10, "image/png", "", 400, "not an image"),
        ("truncated", truncated, "image/png", "", 400, "cannot be decoded"),
        ("empty", b"", "image/png", "", 400, "no image data"),
        ("bad seed", png(Image.new("RGB", (8, 8))), "image/png", "?seed=x", 400, "seed"),
        ("text", b"hello", "text/plain", "", 415, "Content-Type"),
    ]


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor(perturb_batchnorms(define_G(3, 3, 4, "unet_32", "batch", False, backend="eager")), device="cpu")


def test_soak_mixed_requests_over_a_small_queue(predictor):
    goods, bads = good_requests(), bad_requests()
    expected = {name: predictor(decode_image(body), output_type="np") for name, body, _, _ in goods}
    plan = [("good", g) for g in goods] * 40 + [("bad", b) for b in bads] * 20  # 200 good, 160 bad
    random.Random(0).shuffle(plan)
    cfg = ServeConfig(graph_size=0, max_queue=4, max_batch_size=4, timeout_s=30, max_bytes=2**20)
    answers, shed = [], [0]
    lock = threading.Lock()

    def client(items):
        for kind, spec in items:
            name, body, content_type, query = spec[:4]
            for _ in range(400):  # a 503 is the queue shedding load: retry, as a client told Retry-After would
                status, _, answer = request(f"{server.url}/v1/translate{query}", body, {"Content-Type": content_type})
                if status != 503:
                    break
                with lock:
                    shed[0] += 1
                time.sleep(0.002)
            with lock:
                answers.append((kind, spec, status, answer))

    with BackgroundServer(create_app(predictor, cfg)) as server:
        assert request(f"{server.url}/v1/translate", goods[0][1], {"Content-Type": "image/png"})[0] == 200
        watch = PeakRSS()
        baseline = watch.peak
        watch.start()
        chunk = len(plan) // CLIENTS
        threads = [threading.Thread(target=client, args=(plan[i * chunk : (i + 1) * chunk],)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
            assert not t.is_alive()
        watch.done.set()
        metrics = request(f"{server.url}/metrics")[2].decode()
    assert len(answers) == len(plan)
    for kind, spec, status, answer in answers:
        if kind == "good":
            assert status == 200, (spec[0], status, answer[:200])
            assert_same_image(decoded(answer), expected[spec[0]])
        else:
            name, *_, want, words = spec
            assert status == want and words in error_of(answer), (name, status, answer[:200])
    assert watch.peak - baseline < RSS_BOUND, f"RSS grew by {(watch.peak - baseline) / 2**20:.0f} MiB"
    total = sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "fastpix_requests_total"
    )
    assert total == len(plan) + shed[0] + 1  # every request answered once, the warm-up one included
