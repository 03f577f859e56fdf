"""GPU defaults that fail safe, checked on the CPU by injecting the failures: a CUDA graph capture that fails (the
training engine, the Predictor's buckets) warns once, naming the cause, and the run goes on eagerly with the same
results."""

import contextlib
import dataclasses
import warnings

import pytest
import torch

from fastpix.infer.graphs import GraphRunner
from fastpix.infer.predictor import Predictor
from fastpix.models import define_D, define_G
from fastpix.train.engine import TrainEngine
from fastpix.train.step import LOSS_NAMES, Pix2PixStep

pytestmark = pytest.mark.usefixtures("one_thread")


class InjectedCaptureError(RuntimeError):
    pass


class CPUStream:
    def __init__(self, *args):
        pass

    def wait_stream(self, other):
        pass


def failing_graph(*args, **kwargs):
    raise InjectedCaptureError("operation not permitted when stream is capturing")


def engine(graphs: bool):
    torch.manual_seed(0)
    G = define_G(3, 3, 4, "unet_32", "instance", False, backend="eager")
    D = define_D(6, 4, "basic", norm="instance", backend="eager")
    eng = TrainEngine(Pix2PixStep(G, D), torch.device("cpu"), warmup=1)
    if graphs:  # what the constructor allows on CUDA only; the capture itself is made to fail below
        eng.cuda_graphs, eng.graph_status = True, "captured on first use"
        eng._side_stream = contextlib.nullcontext
    return eng


def test_engine_capture_failure_warns_once_and_trains_eagerly(monkeypatch):
    monkeypatch.setattr(torch.cuda, "CUDAGraph", failing_graph)
    batches = [(torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1) for _ in range(4)]
    runs = {}
    for graphs in (True, False):
        eng = engine(graphs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            losses = []
            for A, B in batches:
                eng(A, B)
                losses.append(eng.read_losses())
        runs[graphs] = (losses, [str(w.message) for w in caught], eng)
    (with_graphs, messages, eng), (plain, _, _) = runs[True], runs[False]
    assert with_graphs == plain  # bit for bit: the failed capture ran nothing
    assert len([m for m in messages if "CUDA graph failed" in m]) == 1
    assert "InjectedCaptureError: operation not permitted" in messages[0]
    assert eng.report()["cuda_graph"].startswith("failed, eager: InjectedCaptureError")
    assert eng.report()["layer_choices"] is None and not eng.cuda_graphs  # CPU: nothing to measure
    assert set(with_graphs[0]) == set(LOSS_NAMES)


def test_predictor_bucket_capture_failure_warns_once_and_runs_eagerly(monkeypatch):
    monkeypatch.setattr(torch.cuda, "CUDAGraph", failing_graph)
    monkeypatch.setattr(torch.cuda, "Stream", CPUStream)  # the warm-up's side stream, on a CPU
    monkeypatch.setattr(torch.cuda, "current_stream", CPUStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    torch.manual_seed(0)
    G = define_G(3, 3, 4, "unet_32", "batch", False, backend="eager")
    predictor = Predictor(G, "cpu", "fp32", norm_mode="running")
    # What a plan with CUDA graphs at 32x32 builds on CUDA.
    predictor.graphs = GraphRunner(
        predictor.network, dataclasses.replace(predictor.plan, graph_size=(32, 32)), predictor.input_nc
    )
    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor.warmup()
        out = predictor(list(x), seed=1, output_type="pt")
        predictor(list(x[:1]), output_type="pt")
    assert len([w for w in caught if "CUDA graph failed" in str(w.message)]) == 1
    assert predictor.graphs.failure.startswith("InjectedCaptureError")
    for a, b in zip(out, Predictor(G, "cpu", "fp32", norm_mode="running")(list(x), seed=1, output_type="pt")):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
