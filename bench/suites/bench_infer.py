"""Inference: latency and throughput of the generator, the eager ways against fastpix's, side by side in one run.

(a) eager fp32 NCHW, eval mode (the baseline); (b) eager bf16 channels-last (GPU); (c) torch.compile of (b) (of (a)
on a CPU); (d) fastpix Predictor, norm_mode running (BatchNorm folded); (e) Predictor, norm_mode instance (per-image
statistics). On a GPU the Predictor runs bf16 channels-last with one CUDA graph per batch bucket, captured before
timing; its timings include what a caller pays: padding, stacking, and one output tensor per image.
Each timed call is one forward of a batch, ended by a synchronisation; p50/p99 come from the per-call times.
unet_256 ngf 64 at 256² on a GPU, batches 1, 8, 64. On a CPU a reduced configuration (unet_64, ngf 16, 64², same
batches) keeps the suite runnable anywhere; `--cpu-config real` runs the real size there (batches 1 and 8, few
rounds); `--cpu-config dry` a tiny one without compiler builds (the Predictor and the server on runtime eager,
torch.compile's 'eager' backend). On a CPU (b) is bf16 autocast channels-last as on a GPU, and the Predictor runs
its default: compiled graphs, bf16 where the CPU has it natively. Every row's fraction_of_peak is against the
device's roof for its precision (fastpix.peaks.roof: on a CPU a large matmul timed in the same process).
For the interleaved real-size CPU comparison with training and end-to-end runs, see cpu_compare.py.
The server case: a fixed number of concurrent loopback clients for a fixed time against `fastpix serve`'s app
(Predictor (d)); requests/s and per-request p50/p99.
"""

import io
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from fastpix import runtime
from fastpix.bench_suites.common import configuration_name, roof_info, synchronize
from fastpix.infer.predictor import Predictor
from fastpix.models import define_G
from fastpix.train.flops import conv_flops

GPU = torch.cuda.is_available()


@dataclass(frozen=True)
class Setting:
    """One configuration: the generator (netG, ngf at size²), the batches and timed rounds per batch, the server
    case's clients and seconds, the runtime the Predictor and the server run ('auto': what `fastpix serve` runs),
    and torch.compile's backend for case c."""

    netG: str
    ngf: int
    size: int
    batches: tuple
    rounds: dict
    server_clients: int
    server_seconds: float
    runtime: str = "auto"
    compile_backend: str = "inductor"


SETTINGS = {
    "gpu": Setting("unet_256", 64, 256, (1, 8, 64), {1: 200, 8: 50, 64: 20}, 32, 10.0),
    "real": Setting("unet_256", 64, 256, (1, 8), {1: 5, 8: 3}, 4, 5.0),
    "reduced": Setting("unet_64", 16, 64, (1, 8, 64), {1: 30, 8: 10, 64: 5}, 4, 5.0),
    "dry": Setting("unet_32", 2, 32, (1, 2), {1: 2, 2: 1}, 2, 1.0, runtime="eager", compile_backend="eager"),
}
CASES = (
    "a_eager_fp32_nchw",
    "b_eager_bf16_channels_last",
    "c_torch_compile",
    "d_predictor_running",
    "e_predictor_instance",
)


def generator(setting: Setting):
    torch.manual_seed(0)
    return define_G(3, 3, setting.ngf, setting.netG, "batch", True, backend="eager")


def build(case: str, device: torch.device, batch: int, setting: Setting):
    """A function of a batch tensor (N×3×S×S, [-1, 1], on device) that runs the case's forward."""
    G = generator(setting).eval().to(device)
    if case == "a_eager_fp32_nchw":
        return lambda x: G(x), "fp32"
    if case in ("b_eager_bf16_channels_last", "c_torch_compile") and (GPU or case.startswith("b_")):
        if not GPU and not runtime.cpu_has_native_bf16():
            return None, None
        G = G.to(memory_format=torch.channels_last)
        net = torch.compile(G, backend=setting.compile_backend) if case == "c_torch_compile" else G

        def run(x):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return net(x.contiguous(memory_format=torch.channels_last))

        return run, "bf16"
    if case == "c_torch_compile":
        net = torch.compile(G, backend=setting.compile_backend)
        return lambda x: net(x), "fp32"
    if case.startswith("d_") or case.startswith("e_"):
        mode = "running" if case.startswith("d_") else "instance"
        size = setting.size
        # wait: timed compiled from the first round (a size without its package runs eagerly until it is built).
        predictor = Predictor(
            G.cpu(),
            device=device,
            norm_mode=mode,
            max_batch_size=max(setting.batches) if GPU else batch,
            graph_size=(size, size) if GPU else None,
            runtime=setting.runtime,
        ).warmup((size, size), wait=True)
        return lambda x: predictor(list(x), output_type="pt"), predictor.precision
    return None, None


def pytest_generate_tests(metafunc):
    if "batch" in metafunc.fixturenames:
        metafunc.parametrize("batch", SETTINGS[configuration_name(metafunc.config)].batches)


@pytest.fixture
def setting(configuration):
    return SETTINGS[configuration]


@pytest.mark.parametrize("case_name", CASES)
def test_infer(benchmark, case_name, batch, device, setting):
    run, precision = build(case_name, device, batch, setting)
    if run is None:
        pytest.skip("this CPU has no native bf16: bf16 autocast would time oneDNN's emulation")
    x = torch.rand(batch, 3, setting.size, setting.size, device=device) * 2 - 1
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
        benchmark.pedantic(forward, rounds=setting.rounds[batch], iterations=1, warmup_rounds=2)
    times = np.array(benchmark.stats.stats.data)
    flops = conv_flops(generator(setting), (1, 3, setting.size, setting.size))
    img_per_s = batch / float(np.median(times))
    benchmark.extra_info.update(
        {
            "case": case_name,
            "batch": batch,
            "baseline": case_name.startswith("a_"),
            "config": asdict(setting),
            "precision": precision,
            "p50_ms": 1000 * float(np.percentile(times, 50)),
            "p99_ms": 1000 * float(np.percentile(times, 99)),
            "img_per_s": img_per_s,
            "gflop_per_image": flops / 1e9,
            "tflops": flops * img_per_s / 1e12,
            "ms_per_batch": 1000 * float(np.median(times)),
            **roof_info(device, precision, flops * img_per_s),
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if GPU else None,
        }
    )


def test_server_under_load(benchmark, device, setting):
    pytest.importorskip("fastapi")
    from fastpix.config import ServeConfig
    from fastpix.infer.server import BackgroundServer, create_app

    size, clients, seconds = setting.size, setting.server_clients, setting.server_seconds
    predictor = Predictor(
        generator(setting),
        device=device,
        norm_mode="running",
        max_batch_size=64,
        graph_size=(size, size) if GPU else None,
        runtime=setting.runtime,
    )
    predictor.warmup((size, size), wait=True)  # its packages built (CPU): steady serving is what is timed
    cfg = ServeConfig(max_batch_size=64, graph_size=size if GPU else 0, max_queue=4 * clients)
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
        deadline = time.monotonic() + seconds
        threads = [
            threading.Thread(target=client, args=(f"{server.url}/v1/translate", deadline)) for _ in range(clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 120)

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
    benchmark.extra_info.update(
        {
            "case": "server",
            "baseline": False,
            "config": asdict(setting),
            "clients": clients,
            "seconds": seconds,
            "requests": len(times),
            "requests_per_s": len(times) / seconds,
            "img_per_s": len(times) / seconds,
            "p50_ms": 1000 * float(np.percentile(times, 50)),
            "p99_ms": 1000 * float(np.percentile(times, 99)),
            "mean_batch_size": mean_batch,
        }
    )
