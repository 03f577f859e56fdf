"""The Predictor's typed path (ImageRequest, Predictor.run), normalisation on the device, and the batcher's bounds:
padded pixels per forward pass and in the queue, and requests dropped when nobody waits for them any more."""

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fastpix.data.transforms import to_tensor
from fastpix.infer.batcher import Batcher, QueueFull
from fastpix.infer.images import load_input, to_network_input
from fastpix.infer.predictor import Predictor
from fastpix.infer.requests import ImageRequest, ImageResult
from fastpix.models import define_G

TIMEOUT_S = 30

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dropout_predictor():
    torch.manual_seed(0)
    predictor = Predictor(define_G(3, 3, 4, "unet_64", "batch", True, backend="eager"), dropout=True)
    assert predictor.dropout  # unet_32 has no block that carries dropout
    return predictor


def random_array(w, h, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_typed_requests_equal_the_public_call(dropout_predictor):
    p = dropout_predictor
    images = [random_array(32, 32, 0), random_array(40, 24, 1), random_array(32, 32, 0)]
    results = p.run([ImageRequest(img, seed=s, index=i) for img, s, i in zip(images, (7, 8, 7), (0, 0, 3))])
    assert [(r.seed, r.index) for r in results] == [(7, 0), (8, 0), (7, 3)]
    typed = [r.image for r in results]
    for k, (seed, index) in enumerate([(7, 0), (8, 0), (7, 3)]):
        alone = p(images[k], seed=seed, output_type="np", indices=[index])
        assert np.array_equal(typed[k], alone)
    listed = p(images, seed=[7, 8, 7], output_type="np", indices=[0, 0, 3])
    assert all(np.array_equal(a, b) for a, b in zip(listed, typed))
    assert not np.array_equal(typed[0], typed[2])  # one image, one seed: the index is part of the noise
    # A seed the Predictor picks is named in the result, and gives the same image again.
    (picked,) = p.run([ImageRequest(images[0], index=2)])
    assert isinstance(picked.seed, int) and picked.index == 2
    (again,) = p.run([ImageRequest(images[0], picked.seed, picked.index)])
    assert np.array_equal(picked.image, again.image)
    (other,) = p.run([ImageRequest(images[0], picked.seed + 1, picked.index)])
    assert not np.array_equal(picked.image, other.image)  # the seed matters: the equality above is not vacuous


def test_uint8_inputs_are_normalised_on_the_device_as_the_cpu_chain_does():
    arr = random_array(24, 16, 3)
    t, size = load_input(arr, 3)
    assert t.dtype == torch.uint8 and size == (16, 24)
    assert torch.equal(to_network_input(t, "cpu"), to_tensor(Image.fromarray(arr)))
    for item in (Image.fromarray(arr), torch.from_numpy(arr).permute(2, 0, 1)):
        assert torch.equal(load_input(item, 3)[0], t)
    grey, _ = load_input(arr, 1)  # channels differ from the network's: PIL's conversion, as before
    assert grey.shape == (1, 16, 24) and torch.equal(
        grey[0], torch.from_numpy(np.array(Image.fromarray(arr).convert("L")))
    )
    float_input = to_tensor(Image.fromarray(arr))
    assert load_input(float_input, 3)[0].dtype == torch.float32


class Held:
    """A predictor stand-in whose first run waits for the test: requests pile up behind it. Records each batch."""

    input_nc, multiple, dropout = 3, 32, False

    def __init__(self):
        self.gate, self.entered, self.batches = threading.Event(), threading.Event(), []

    def warmup(self, size):
        return self

    def run(self, requests, output_type="np"):
        self.batches.append([r.seed for r in requests])
        self.entered.set()
        assert self.gate.wait(TIMEOUT_S)
        return [ImageResult(r.seed, r.seed, r.index) for r in requests]  # each "image" is its request's seed


def results(jobs):
    return [job.future.result(TIMEOUT_S) for job in jobs]


def test_one_forward_pass_computes_at_most_max_batch_pixels():
    held = Held()
    batcher = Batcher(held, max_batch_size=8, max_batch_pixels=2500).start()
    try:
        first = batcher.submit("img", 0, 1024)
        assert held.entered.wait(TIMEOUT_S)
        jobs = [batcher.submit("img", k, pixels) for k, pixels in enumerate([1024, 1024, 1024, 2048, 400], 1)]
        held.gate.set()
        assert results([first] + jobs) == [0, 1, 2, 3, 4, 5]
    finally:
        batcher.stop(TIMEOUT_S)
    assert held.batches == [[0], [1, 2], [3], [4, 5]]  # 1024+1024 fits 2500, a third does not; 2048+400 does


def test_the_queue_holds_at_most_max_queue_pixels():
    held = Held()
    batcher = Batcher(held, max_queue=8, max_queue_pixels=3000).start()
    try:
        first = batcher.submit("img", 0, 1024)
        assert held.entered.wait(TIMEOUT_S)
        waiting = [batcher.submit("img", k, 1024) for k in (1, 2)]
        with pytest.raises(QueueFull, match="2048 padded pixels are already waiting"):
            batcher.submit("img", 3, 1024)
        assert batcher.queued_pixels == 2048
        held.gate.set()
        assert results([first] + waiting) == [0, 1, 2]
        assert batcher.queued_pixels == 0
    finally:
        batcher.stop(TIMEOUT_S)


def test_a_request_past_its_deadline_is_dropped_before_its_batch_runs():
    held = Held()
    batcher = Batcher(held).start()
    try:
        first = batcher.submit("img", 0)
        assert held.entered.wait(TIMEOUT_S)
        late = batcher.submit("img", 1, deadline=time.monotonic() + 0.05)
        kept = batcher.submit("img", 2, deadline=time.monotonic() + TIMEOUT_S)
        time.sleep(0.1)
        held.gate.set()
        assert results([first, kept]) == [0, 2]
        assert late.future.cancelled()
    finally:
        batcher.stop(TIMEOUT_S)
    assert held.batches == [[0], [2]]
