"""Inference: latency and throughput of the generator, the eager ways against fastpix's, side by side in one run.

(a) eager fp32 NCHW, eval mode (the baseline); (b) eager bf16 channels-last (GPU); (c) torch.compile of (b) (of (a)
on a CPU); (d) fastpix Predictor, norm_mode running (BatchNorm folded); (e) Predictor, norm_mode instance (per-image
statistics). On a GPU the Predictor runs bf16 channels-last with one CUDA graph per batch bucket, captured before
timing; its timings include what a caller pays: padding, stacking, and one output tensor per image.
Each timed call is one forward of a batch, ended by a synchronisation; p50/p99 come from the per-call times.
unet_256 ngf 64 at 256² on a GPU, batches 1, 8, 64. On a CPU a reduced configuration (unet_64, ngf 16, 64², same
batches) keeps the suite runnable anywhere; `--cpu-config real` runs the real size there (batches 1 and 8, few
rounds). On a CPU (b) is bf16 autocast channels-last as on a GPU, and the Predictor runs its default: compiled
graphs, bf16 where the CPU has it natively. Every row's fraction_of_peak is against the device's peak for its
precision: on a CPU a large matmul timed in the same run (conftest.peak).
For the interleaved real-size CPU comparison with training and end-to-end runs, see cpu_compare.py.
The server case: a fixed number of concurrent loopback clients for a fixed time against `fastpix serve`'s app
(Predictor (d)); requests/s and per-request p50/p99.
"""
import io
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cpu_real, peak, synchronize
from fastpix import runtime
from fastpix.infer.predictor import Predictor
from fastpix.models import define_G
from fastpix.train.flops import conv_flops

GPU = torch.cuda.is_available()
REAL = GPU or cpu_real()
CONFIG = dict(netG="unet_256", ngf=64, size=256) if REAL else dict(netG="unet_64", ngf=16, size=64)
BATCHES = (1, 8) if cpu_real() else (1, 8, 64)
ROUNDS = {1: 200, 8: 50, 64: 20} if GPU else {1: 5, 8: 3} if REAL else {1: 30, 8: 10, 64: 5}
SERVER_CLIENTS = 32 if GPU else 4
SERVER_SECONDS = 10.0 if GPU else 5.0
SERVER_RUNTIME = "auto"  # what `fastpix serve` runs
CASES = ("a_eager_fp32_nchw", "b_eager_bf16_channels_last", "c_torch_compile", "d_predictor_running",
         "e_predictor_instance")


def generator():
    torch.manual_seed(0)
    return define_G(3, 3, CONFIG["ngf"], CONFIG["netG"], "batch", True, backend="eager")


def build(case: str, device: torch.device, batch: int):
    """A function of a batch tensor (N×3×S×S, [-1, 1], on device) that runs the case's forward."""
    G = generator().eval().to(device)
    if case == "a_eager_fp32_nchw":
        return lambda x: G(x), "fp32"
    if case in ("b_eager_bf16_channels_last", "c_torch_compile") and (GPU or case.startswith("b_")):
        if not GPU and not runtime.cpu_has_native_bf16():
            return None, None
        G = G.to(memory_format=torch.channels_last)
        net = torch.compile(G) if case == "c_torch_compile" else G

        def run(x):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return net(x.contiguous(memory_format=torch.channels_last))
        return run, "bf16"
    if case == "c_torch_compile":
        net = torch.compile(G)
        return lambda x: net(x), "fp32"
    if case.startswith("d_") or case.startswith("e_"):
        mode = "running" if case.startswith("d_") else "instance"
        size = CONFIG["size"]
        # wait: timed compiled from the first round (a size without its package runs eagerly until it is built).
        predictor = Predictor(G.cpu(), device=device, norm_mode=mode, max_batch_size=max(BATCHES) if GPU else batch,
                              graph_size=(size, size) if GPU else None).warmup((size, size), wait=True)
        return lambda x: predictor(list(x), output_type="pt"), predictor.precision
    return None, None


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case_name", CASES)
def test_infer(benchmark, case_name, batch, device):
    run, precision = build(case_name, device, batch)
    if run is None:
        pytest.skip("this CPU has no native bf16: bf16 autocast would time oneDNN's emulation")
    x = torch.rand(batch, 3, CONFIG["size"], CONFIG["size"], device=device) * 2 - 1
    with torch.inference_mode():
        for _ in range(3):  # warm-up: compilation, cuDNN / oneDNN algorithm choice
            run(x)
        synchronize()
        if GPU:
            torch.cuda.reset_peak_memory_stats()

        def forward():
            run(x)
            synchronize()

        benchmark.group = f"infer batch {batch}"
        benchmark.pedantic(forward, rounds=ROUNDS[batch], iterations=1, warmup_rounds=2)
    times = np.array(benchmark.stats.stats.data)
    flops = conv_flops(generator(), (1, 3, CONFIG["size"], CONFIG["size"]))
    img_per_s = batch / float(np.median(times))
    peak_flops = peak(device, precision)
    benchmark.extra_info.update({
        "case": case_name, "batch": batch, "baseline": case_name.startswith("a_"), "config": CONFIG,
        "precision": precision, "p50_ms": 1000 * float(np.percentile(times, 50)),
        "p99_ms": 1000 * float(np.percentile(times, 99)), "img_per_s": img_per_s,
        "gflop_per_image": flops / 1e9, "tflops": flops * img_per_s / 1e12,
        "ms_per_batch": 1000 * float(np.median(times)),
        "fraction_of_peak": flops * img_per_s / peak_flops if peak_flops else None,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2 ** 30 if GPU else None})


def test_server_under_load(benchmark, device):
    pytest.importorskip("fastapi")
    from fastpix.config import ServeConfig
    from fastpix.infer.server import BackgroundServer, create_app

    size = CONFIG["size"]
    predictor = Predictor(generator(), device=device, norm_mode="running", max_batch_size=64,
                          graph_size=(size, size) if GPU else None, runtime=SERVER_RUNTIME)
    predictor.warmup((size, size), wait=True)  # its packages built (CPU): steady serving is what is timed
    cfg = ServeConfig(max_batch_size=64, graph_size=size if GPU else 0, max_queue=4 * SERVER_CLIENTS)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    body = buffer.getvalue()
    latencies, failures = [], []

    def client(url, deadline):
        while time.monotonic() < deadline:
            started = time.perf_counter()
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"})
            try:
                with urllib.request.urlopen(req, timeout=60) as response:
                    response.read()
                latencies.append(time.perf_counter() - started)
            except OSError as exc:
                failures.append(repr(exc))

    def load(server):
        latencies.clear()
        deadline = time.monotonic() + SERVER_SECONDS
        threads = [threading.Thread(target=client, args=(f"{server.url}/v1/translate", deadline))
                   for _ in range(SERVER_CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(SERVER_SECONDS + 120)

    with BackgroundServer(create_app(predictor, cfg)) as server:
        ready = time.monotonic() + 300
        while not server.app.state.batcher.ready.is_set():
            assert time.monotonic() < ready, "the server did not warm up"
            time.sleep(0.05)
        benchmark.group = "serve"
        benchmark.pedantic(load, args=(server,), rounds=1, iterations=1)
        mean_batch = server.app.state.metrics.mean_batch_size()
    assert not failures, failures[:3]
    times = np.array(latencies)
    benchmark.extra_info.update({
        "case": "server", "baseline": False, "config": CONFIG, "clients": SERVER_CLIENTS,
        "seconds": SERVER_SECONDS, "requests": len(times), "requests_per_s": len(times) / SERVER_SECONDS,
        "img_per_s": len(times) / SERVER_SECONDS, "p50_ms": 1000 * float(np.percentile(times, 50)),
        "p99_ms": 1000 * float(np.percentile(times, 99)), "mean_batch_size": mean_batch})
