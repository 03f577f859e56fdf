"""`make gpu-check`: prove fastpix's GPU claims on a bare GPU machine in one short window, stage by stage.

    make gpu-check [OUT=dir]           # on the GPU machine: pip install --no-deps -e ., then every stage
    make gpu-check DRY=1 OUT=dir       # anywhere: every stage's code on the CPU at tiny shapes (Triton interpreted)

Stages run in priority order (STAGES), each in its own process under its own time budget: a stage that overruns
is killed and marked 'timeout', and the next one starts. Each writes OUT/<stage>.json the moment it ends (and after
each row while it runs), and OUT/summary.md is rewritten after every stage, so whatever happens the results so far
are on disk. Every JSON has one schema (SCHEMA_KEYS): schema, stage, status, device, versions, revision, dry,
budget_s, seconds, rows (a list of flat dicts), note. The measurements come from the benchmark suites' own
factories and settings (fastpix.bench_suites: bench_train.build, bench_infer's settings, layers.block_step), the dry
run taking their 'dry' settings, and from pytest-benchmark runs of bench_data.py and bench_infer.py's server case
(with --cpu-config dry in the dry run); correctness is a pytest run of the gpu-marked tests. The MFU and roof
figures are against fastpix.peaks (the datasheet's dense peak of this GPU; the environment row names it).

The exit status is 0 when every stage ended ok or skipped, 1 when any failed or ran out of its budget (the summary
is written either way). The budgets add up to 9 minutes on the GPU (the window is 15, a start takes 1-2): see
STAGES for each one's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
SUITES = os.path.join(BENCH, "suites")
SCHEMA = "fastpix-gpu-check/1"
SCHEMA_KEYS = (
    "schema",
    "stage",
    "status",
    "device",
    "versions",
    "revision",
    "dry",
    "budget_s",
    "seconds",
    "rows",
    "note",
)
STATUSES = ("ok", "failed", "timeout", "skipped", "running")
# (stage, budget in seconds on the GPU, in the dry run), in priority order. GPU budgets: install builds the C++
# decoder (~20 s); correctness compiles every fused kernel once per dtype and shape class (the conv blocks at
# batch 1/16/64 first); train and conv_blocks compile the fused convs and tune each layer (two timings per layer
# and batch); compile is last because inductor's compile time alone can take a minute. Dry budgets: about three
# times what each stage takes on a quiet CPU of two cores (2-30 s; about 80 s in all), so that a CPU shared with
# other jobs still finishes inside them; every dry stage runs without compiler builds (runtime eager,
# torch.compile's 'eager' backend).
STAGES = (
    ("install", 45, 20),
    ("environment", 15, 30),
    ("correctness", 65, 60),
    ("conv_correctness", 60, 45),
    ("train", 100, 120),
    ("conv_blocks", 70, 60),
    ("inference", 55, 90),
    ("server", 20, 60),
    ("data", 35, 60),
    ("compile", 60, 60),
)
# The gpu-marked tests, in two stages so that the cheap, telling ones cannot be starved by compilations: first the
# CUDA-graph iteration against eager, the Predictor's graph buckets and norm modes (both backends), the norm and
# loss kernels and the data paths on the device; then every fused conv block (a compilation per flag set and dtype).
CORRECTNESS_TESTS = (
    "tests/test_engine.py",
    "tests/test_predictor.py",
    "tests/kernels/test_predictor_triton.py",
    "tests/kernels/test_l1_loss.py",
    "tests/kernels/test_patchgan_loss.py",
    "tests/kernels/test_batch_norm_act.py",
    "tests/test_cache.py",
    "tests/test_stream.py",
    "tests/test_server.py",
)
CONV_CORRECTNESS_TESTS = ("tests/kernels/test_conv_bn_act.py",)
SERVER_DEPS = ("fastapi", "uvicorn", "multipart")


# ---- the record of one stage -----------------------------------------------------------------------------------


def revision() -> str:
    """The git revision; FASTPIX_REVISION when set (a copied working tree may come without its .git)."""
    if os.environ.get("FASTPIX_REVISION"):
        return os.environ["FASTPIX_REVISION"]
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "triton", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001 - an environment report names what is missing
            out[name] = f"missing ({type(exc).__name__})"
    try:
        import torch

        out["cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - an environment report leaves out what it cannot read
        pass
    return out


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except Exception:  # noqa: BLE001 - a broken CUDA set-up still gets a name: the CPU's
        pass
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def record(stage, status, rows, *, dry, budget, seconds, note="") -> dict:
    return {
        "schema": SCHEMA,
        "stage": stage,
        "status": status,
        "device": device_name(),
        "versions": versions(),
        "revision": revision(),
        "dry": dry,
        "budget_s": budget,
        "seconds": round(seconds, 2),
        "rows": rows,
        "note": note,
    }


def write_text(path, text):
    """The file replaced whole (a temporary renamed over it). Not fastpix.files: the driver runs before the install
    stage has made fastpix importable on a bare machine."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path, data):
    write_text(path, json.dumps(data, indent=1, default=str))


class Stage:
    """What a stage's code gets: the dry flag, and `add(row)`, which appends a row and rewrites the stage's JSON."""

    def __init__(self, name, out, dry, budget):
        self.name, self.out, self.dry, self.budget = name, out, dry, budget
        self.rows, self.note, self.start = [], "", time.monotonic()
        self.path = os.path.join(out, f"{name}.json")

    def add(self, **row):
        self.rows.append(row)
        self.save("running")
        print(f"[{self.name}] " + " ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)

    def save(self, status):
        write_json(
            self.path,
            record(
                self.name,
                status,
                self.rows,
                dry=self.dry,
                budget=self.budget,
                seconds=time.monotonic() - self.start,
                note=self.note,
            ),
        )


# ---- the stages (each runs in its own process) ----------------------------------------------------------------


def stage_install(st: Stage):
    if st.dry:
        st.note = "dry run: fastpix is already installed in this environment (make install)"
        return "skipped"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    st.add(
        command=" ".join(cmd),
        rc=proc.returncode,
        seconds=time.monotonic() - started,
        tail=(proc.stdout + proc.stderr)[-600:],
    )
    return "ok" if proc.returncode == 0 else "failed"


def stage_environment(st: Stage):
    import torch

    row = {"device": device_name(), **versions(), "revision": revision(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        row.update(
            memory_gb=props.total_memory / 2**30,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
        )
        from fastpix.peaks import describe_device

        row["peak"] = describe_device()
        try:
            row["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            row["driver"] = "nvidia-smi not found"
    from fastpix.data import decode

    row["decoder"] = decode.backend()
    row["server_deps"] = ",".join(m for m in SERVER_DEPS if not _importable(m)) or "present"
    if row["server_deps"] != "present":
        row["server_deps"] = f"missing: {row['server_deps']}"
    row["pytest_benchmark"] = _importable("pytest_benchmark")
    st.add(**row)
    return "ok"


def stage_correctness(st: Stage, tests=CORRECTNESS_TESTS):
    """The gpu-marked tests (full sweep: real pix2pix shapes, batch 1/16/64), one row per test as it finishes; the
    run is stopped a few seconds before the stage's budget so that this stage still writes its own record. The
    stage fails when pytest does (a failed test, a collection error)."""
    results = os.path.join(st.out, f"{st.name}.jsonl")
    if os.path.exists(results):
        os.remove(results)
    env = dict(
        os.environ,
        FASTPIX_FULL="1",
        FASTPIX_GPU_CHECK_RESULTS=results,
        PYTHONPATH=os.pathsep.join([BENCH, os.environ.get("PYTHONPATH", "")]),
    )
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rf",
        "-m",
        "gpu",
        "-p",
        "gpu_check",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "--continue-on-collection-errors",
        *tests,
    ]
    try:
        with open(os.path.join(st.out, f"{st.name}_pytest.log"), "w") as log:
            code = subprocess.run(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=max(st.budget - 8, 1)
            ).returncode
        status = "ok" if code == 0 else "failed"
        if code:
            st.note = f"pytest exited {code} (see {st.name}_pytest.log)"
    except subprocess.TimeoutExpired:
        status, st.note = "timeout", "stopped at the budget: the tests not listed did not run"
    if os.path.exists(results):
        with open(results) as f:
            for line in f:
                st.add(**json.loads(line))
    outcomes = [r["outcome"] for r in st.rows]
    st.note = (st.note + "; " if st.note else "") + ", ".join(
        f"{outcomes.count(o)} {o}" for o in ("passed", "failed", "skipped")
    )
    return status


def stage_conv_correctness(st: Stage):
    return stage_correctness(st, CONV_CORRECTNESS_TESTS)


def _device():
    from fastpix.runtime import default_device

    return default_device()


def _time(fn, rounds):
    """Seconds per call of fn (synchronised on CUDA): the median of `rounds` timed calls."""
    import torch

    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], times


def _setting(st: Stage) -> str:
    """The suites' settings this stage takes: their 'dry' ones in the dry run, else the GPU's."""
    return "dry" if st.dry else "gpu"


def _roof_row(device, precision, flops_per_s) -> dict:
    """The MFU of a row and the roof it is against (fastpix.peaks.roof: the datasheet's on a GPU)."""
    from fastpix.peaks import roof

    peak = roof(device, precision)
    return {"mfu": flops_per_s / peak.flops, "roof": peak.describe()}


def stage_train(st: Stage):
    """bench_train's cases a, b, d, e (reference fp32 NCHW, eager bf16 channels-last, engine + graphs on backend
    eager and triton) at batch 1/16/64: img/s, ms/it, MFU, peak memory, what the engine ran. The dry run: batch 2,
    and batch 1 for backend triton (Triton's interpreter takes seconds per layer)."""
    import torch

    from fastpix.bench_suites import bench_train as bt

    setting = bt.SETTINGS[_setting(st)]
    batches, iters = ((2,), 1) if st.dry else ((1, 16, 64), 10)
    device = _device()
    for batch in batches:
        for case in (
            "a_reference_fp32_nchw",
            "b_eager_bf16_channels_last",
            "d_fastpix_graphs_eager",
            "e_fastpix_graphs_triton",
        ):
            # the dry run's CPU step cannot be graph-safe (capturable Adam needs CUDA): the same cases without graphs
            spec = dict(bt.CASES[case], graphs=bt.CASES[case]["graphs"] and not st.dry)
            case_batch = 1 if st.dry and spec["backend"] == "triton" else batch
            engine, A, B, flops, precision = bt.build(spec, case_batch, device, setting)
            for _ in range(0 if st.dry else 5):  # warm-up: tuning, graph capture, compilation, cuDNN heuristics
                engine(A, B)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            # bound to this case's values (ruff B023), though _time calls it before the loop moves on
            seconds, _ = _time(lambda e=engine, a=A, b=B: [e(a, b) for _ in range(iters)], 1 if st.dry else 3)
            per_iter = seconds / iters
            report = engine.report()
            choices = [c for net in (report["layer_choices"] or {}).values() for c in net.values()]
            st.add(
                case=case,
                batch=case_batch,
                precision=precision,
                ms_per_iter=1000 * per_iter,
                img_per_s=case_batch / per_iter,
                **_roof_row(device, precision, flops * case_batch / per_iter),
                peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
                cuda_graph=report["cuda_graph"],
                layers_triton=choices.count("triton"),
                layers_cudnn=sum(c.startswith("cudnn") for c in choices),
                layers_failed=sum("failed" in c for c in choices),
            )
            engine.read_losses()
            del engine
    return "ok"


def _dry_layers():
    """Three of the pix2pix conv blocks (a down conv, a two-source up conv, the Tanh output) at interpreter size."""
    import dataclasses

    from fastpix.bench_suites.layers import PIX2PIX_CONV_LAYERS

    picked = [layer for layer in PIX2PIX_CONV_LAYERS if layer.name in ("G.down3", "G.up6", "G.up1")]
    return [
        dataclasses.replace(
            layer, sources=tuple(min(c, 4) for c in layer.sources), out_channels=min(layer.out_channels, 4), size=4
        )
        for layer in picked
    ]


def stage_conv_blocks(st: Stage):
    """Every fused conv block fwd+bwd against cuDNN (the suites' layer factory, as bench_kernels.py), and the
    implementation the per-layer choice would take (the faster). The block sizes are measured in each block's
    warm-up, as a model's tuning step does, with the machine's timings cached for the run."""
    import torch

    from fastpix.bench_suites.layers import PIX2PIX_CONV_LAYERS, block_step
    from fastpix.kernels.conv_tuning import median_seconds
    from fastpix.models.tuning import conv_tuning

    device = _device()
    dtype = torch.float32 if st.dry else torch.bfloat16
    layers, batches = (_dry_layers(), (1,)) if st.dry else (PIX2PIX_CONV_LAYERS, (1, 16, 64))
    tuning = conv_tuning()
    for batch in batches:
        for layer in layers:
            row = {"layer": layer.name, "batch": batch, "dtype": str(dtype)[6:]}
            for impl in ("triton", "cudnn"):
                try:
                    step = block_step(layer, batch, dtype, device, impl, tuning=tuning)
                    with tuning.measuring():
                        step()  # warm-up, and the block sizes' tuning
                    seconds = _time(step, 1)[0] if st.dry else median_seconds(step)
                    row[f"{impl}_ms"] = 1000 * seconds
                except Exception as exc:  # noqa: BLE001 - a failing block is a result, and the next one runs
                    row[f"{impl}_error"] = f"{type(exc).__name__}: {exc}"[:200]
            t_fused, t_eager = row.get("triton_ms"), row.get("cudnn_ms")
            row["speedup"] = t_eager / t_fused if t_fused and t_eager else None
            row["choice"] = "triton" if t_fused and (not t_eager or t_fused <= t_eager) else "cudnn"
            passes = 2 if layer.reads[0] == "image" else 3
            row["tflop_per_s"] = passes * layer.flops(batch) / (t_fused / 1000) / 1e12 if t_fused else None
            st.add(**row)
            if not st.dry:
                torch.cuda.empty_cache()
    return "ok"


def stage_inference(st: Stage):
    """Batch-1 p50/p99 latency and batch-64 img/s: eager bf16 channels-last and the Predictor (CUDA graphs,
    norm_mode running), on backend eager and triton; bench_infer's settings."""
    import torch

    from fastpix.bench_suites import bench_infer as bi
    from fastpix.infer.predictor import Predictor
    from fastpix.models import define_G

    cfg = bi.SETTINGS[_setting(st)]
    device = _device()
    big = 2 if st.dry else 64
    rounds = {1: 2, big: 1} if st.dry else {1: 100, big: 10}
    # the interpreter takes seconds per forward: the dry run's triton rows are one call at batch 1
    batches = {"eager": (1, big), "triton": (1,) if st.dry else (1, big)}
    gpu = device.type == "cuda"
    for backend in ("eager", "triton"):
        torch.manual_seed(0)
        G = define_G(3, 3, cfg.ngf, cfg.netG, "batch", True, backend=backend).eval()
        size = cfg.size
        # runtime eager: the rows are the GPU paths; on the dry run's CPU, 'auto' would first build AOTInductor
        # packages (seconds each on a fresh cache), which is not what this stage measures.
        predictor = Predictor(
            G,
            device=device,
            norm_mode="running",
            max_batch_size=big,
            graph_size=(size, size) if gpu else None,
            runtime="eager",
        )
        with torch.inference_mode():
            if gpu:  # the two buckets timed here (warmup() would capture, and tune, all seven)
                predictor.graphs.capture(1)
                predictor.graphs.capture(big)
            else:
                predictor.warmup((size, size))
        net = predictor.network
        for way in ("eager", "predictor"):
            for batch in batches[backend]:
                x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
                # each run is bound to this iteration's values (it is timed before the loops move on)
                if way == "predictor":

                    def run(predictor=predictor, x=x):
                        predictor(list(x), output_type="pt")
                else:
                    xc = x.contiguous(memory_format=torch.channels_last) if gpu else x

                    def run(predictor=predictor, net=net, xc=xc):
                        with predictor.autocast():
                            net(xc)

                slow = st.dry and backend == "triton"
                with torch.inference_mode():
                    if not slow:
                        _time(run, 1 if st.dry else 3)
                    median, times = _time(run, 1 if slow else rounds[batch])
                times = sorted(times)
                st.add(
                    backend=backend,
                    way=way,
                    batch=batch,
                    precision=predictor.precision,
                    graphs=way == "predictor" and predictor.graphs is not None and predictor.graphs.failure is None,
                    p50_ms=1000 * median,
                    p99_ms=1000 * times[min(len(times) - 1, int(0.99 * len(times)))],
                    img_per_s=batch / median,
                )
    return "ok"


def _pytest_benchmark_rows(st: Stage, tests, select=None, timeout=None):
    """Run benchmark suites (`tests`: paths under bench/suites/, with ::test selections) under pytest-benchmark, in
    the dry run with the suites' dry configuration, and add one row per benchmark (its extra_info and median)."""
    path = os.path.join(st.out, f"{st.name}_benchmark.json")
    storage = os.path.join(st.out, f"{st.name}_benchmark_storage")  # pytest-benchmark creates one even unused
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        f"--rootdir={SUITES}",
        *[os.path.join(SUITES, t) for t in tests],
        f"--benchmark-json={path}",
        "--benchmark-disable-gc",
        f"--benchmark-storage=file://{storage}",
        f"--cpu-config={'dry' if st.dry else 'reduced'}",
    ]
    if select:
        cmd += ["-k", select]
    try:
        proc = subprocess.run(cmd, cwd=st.out, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:  # pytest-benchmark writes its JSON at the end: nothing to keep
        st.note = f"stopped at the budget ({timeout:g} s) before pytest-benchmark wrote its results"
        return "timeout"
    if not os.path.exists(path):
        st.note = f"pytest exited {proc.returncode} without results: {proc.stdout[-400:]}"
        return "failed"
    with open(path) as f:
        for bench in json.load(f)["benchmarks"]:
            info = {k: v for k, v in bench.get("extra_info", {}).items() if not isinstance(v, (list, dict))}
            st.add(name=bench["name"], median_ms=1000 * bench["stats"]["median"], **info)
    if proc.returncode != 0:
        st.note = f"pytest exited {proc.returncode}: {proc.stdout[-400:]}"
        return "failed"
    return "ok"


def stage_server(st: Stage):
    missing = [m for m in SERVER_DEPS if not _importable(m)]
    if missing:
        st.note = (
            f"skipped: {', '.join(missing)} not installed on this machine (the server needs the 'serve' "
            "extra; carry their wheels to measure it)"
        )
        return "skipped"
    return _pytest_benchmark_rows(st, ["bench_infer.py::test_server_under_load"], timeout=max(st.budget - 5, 1))


def stage_data(st: Stage):
    select = "pipeline and 512x256 and not uint8" + (" and not dataloader" if st.dry else "")
    return _pytest_benchmark_rows(st, ["bench_data.py"], select, timeout=max(st.budget - 5, 1))


def stage_compile(st: Stage):
    """torch.compile's row last: bench_train's case c (training). In the dry run its setting compiles with
    torch.compile's 'eager' backend: the code path, not inductor's compile time."""
    from fastpix.bench_suites import bench_train as bt

    batch = 2 if st.dry else 16
    device = _device()
    started = time.monotonic()
    engine, A, B, flops, precision = bt.build(bt.CASES["c_torch_compile"], batch, device, bt.SETTINGS[_setting(st)])
    for _ in range(1 if st.dry else 3):
        engine(A, B)
    compile_s = time.monotonic() - started
    iters = 1 if st.dry else 10
    seconds, _ = _time(lambda: [engine(A, B) for _ in range(iters)], 1 if st.dry else 3)
    st.add(
        case="c_torch_compile train",
        batch=batch,
        precision=precision,
        compile_s=compile_s,
        ms_per_iter=1000 * seconds / iters,
        img_per_s=batch * iters / seconds,
        **_roof_row(device, precision, flops * batch * iters / seconds),
    )
    return "ok"


STAGE_CODE = {
    "install": stage_install,
    "environment": stage_environment,
    "correctness": stage_correctness,
    "conv_correctness": stage_conv_correctness,
    "train": stage_train,
    "conv_blocks": stage_conv_blocks,
    "inference": stage_inference,
    "server": stage_server,
    "data": stage_data,
    "compile": stage_compile,
}


def run_stage(name, out, dry, budget):
    st = Stage(name, out, dry, budget)
    st.save("running")
    try:
        status = STAGE_CODE[name](st)
    except Exception:  # noqa: BLE001 - the record says what broke; the driver goes on with the next stage
        st.note = traceback.format_exc()[-1500:]
        status = "failed"
    st.save(status)
    return 0 if status in ("ok", "skipped") else 1


# ---- pytest plugin (-p gpu_check): one JSON line per test ---------------------------------------------------


def pytest_runtest_logreport(report):
    path = os.environ.get("FASTPIX_GPU_CHECK_RESULTS")
    if not path or not (report.when == "call" or report.outcome != "passed"):
        return
    message = ""
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        message = str(report.longrepr[2])
    elif report.outcome == "failed":
        message = str(report.longrepr)[-800:]
    with open(path, "a") as f:
        f.write(
            json.dumps(
                {"test": report.nodeid, "outcome": report.outcome, "seconds": report.duration, "message": message}
            )
            + "\n"
        )


# ---- the driver ---------------------------------------------------------------------------------------------


def _importable(name) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "-"
    return str(v).replace("|", "/").replace("\n", " ")[:80]


def _per_file(rows):
    """The correctness rows as one line per test file: counts per outcome and seconds."""
    files = {}
    for row in rows:
        f = files.setdefault(
            row["test"].split("::")[0],
            {"file": row["test"].split("::")[0], "passed": 0, "failed": 0, "skipped": 0, "seconds": 0.0},
        )
        f[row["outcome"]] = f.get(row["outcome"], 0) + 1
        f["seconds"] += row["seconds"]
    return list(files.values())


def summary(out, stages, dry) -> str:
    records = {}
    for name, *_ in stages:
        path = os.path.join(out, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                records[name] = json.load(f)
    env = (records.get("environment") or {}).get("rows") or [{}]
    first = next(iter(records.values()), {})
    lines = [
        f"# fastpix gpu-check{' (dry run: CPU, tiny shapes, Triton interpreted)' if dry else ''}",
        "",
        f"device: {first.get('device', '?')}; revision {first.get('revision', '?')}; "
        + ", ".join(f"{k} {v}" for k, v in first.get("versions", {}).items())
        + f"; written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        "| stage | status | seconds | budget s | rows | note |",
        "|---|---|---|---|---|---|",
    ]
    for name, *_ in stages:
        r = records.get(name)
        if r is None:
            lines.append(f"| {name} | not run | - | - | - | - |")
            continue
        lines.append(
            f"| {name} | {r['status']} | {_fmt(r['seconds'])} | {_fmt(r['budget_s'])} | {len(r['rows'])} | "
            f"{_fmt(r['note'].strip().splitlines()[-1] if r['note'].strip() else '')} |"
        )
    if env[0]:
        lines += ["", "## environment", ""] + [f"- {k}: {_fmt(v)}" for k, v in env[0].items()]
    for name, *_ in stages:
        r = records.get(name)
        if not r or not r["rows"] or name in ("environment",):
            continue
        rows = _per_file(r["rows"]) if name.endswith("correctness") else r["rows"]
        columns = list(dict.fromkeys(k for row in rows for k in row if k not in ("tail", "message")))
        lines += ["", f"## {name}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in rows:
            lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
        failures = [row for row in r["rows"] if row.get("outcome") == "failed"]
        for row in failures:
            lines += ["", f"**{row['test']}** failed:", "", "```", row["message"][-800:], "```"]
    return "\n".join(lines) + "\n"


def default_out(dry) -> str:
    try:
        import torch

        gpu = torch.cuda.get_device_name().replace(" ", "-") if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001 - a folder name must come out whatever CUDA says
        gpu = "unknown"
    kind = "dry_" if dry else ""
    return os.path.join(BENCH, "results", f"{datetime.date.today():%Y-%m-%d}_{kind}{gpu}_{revision()}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="", help="results folder (default: bench/results/<date>_<gpu>_<rev>/)")
    parser.add_argument("--dry", action="store_true", help="every stage on the CPU at tiny shapes (default: off)")
    parser.add_argument("--stages", default="", help="comma-separated subset of the stages (default: all)")
    parser.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="STAGE=SECONDS",
        help="override a stage's time budget (default: the STAGES table)",
    )
    parser.add_argument("--run-stage", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out or default_out(args.dry))
    os.makedirs(out, exist_ok=True)
    budgets = {name: (dry if args.dry else gpu) for name, gpu, dry in STAGES}
    budgets.update({k: float(v) for k, v in (b.split("=", 1) for b in args.budget)})
    if args.run_stage:
        return run_stage(args.run_stage, out, args.dry, budgets[args.run_stage])
    unknown = set(args.stages.split(",")) - {name for name, *_ in STAGES} if args.stages else set()
    if unknown:
        parser.error(f"--stages: {', '.join(sorted(unknown))} not among {', '.join(name for name, *_ in STAGES)}")
    chosen = [s for s in STAGES if not args.stages or s[0] in args.stages.split(",")]
    env = dict(os.environ, PYTHONUNBUFFERED="1", FASTPIX_TUNING_CACHE=os.path.join(out, "conv_tuning.json"))
    # Block-size autotuning compiles every candidate config per problem: hundreds of compilations, more than the
    # window holds. The per-layer choice (Triton or cuDNN) is still measured. FASTPIX_CONV_AUTOTUNE=1 turns it on.
    env.setdefault("FASTPIX_CONV_AUTOTUNE", "0")
    if args.dry:
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    started = time.monotonic()
    for name, *_ in chosen:
        budget = budgets[name]
        t0 = time.monotonic()
        _drive_stage(name, budget, out, args.dry, args.budget, env)
        write_text(os.path.join(out, "summary.md"), summary(out, chosen, args.dry))
        print(f"{name}: {_status(out, name)} in {time.monotonic() - t0:.1f} s (budget {budget:g} s)", flush=True)
    not_ok = [name for name, *_ in chosen if _status(out, name) not in ("ok", "skipped")]
    print(
        f"gpu-check: {time.monotonic() - started:.0f} s; results in {out}/summary.md"
        + (f"; failed or out of budget: {', '.join(not_ok)}" if not_ok else ""),
        flush=True,
    )
    return 1 if not_ok else 0


def _drive_stage(name: str, budget: float, out: str, dry: bool, budget_flags: list, env: dict):
    """Run one stage in its own process (and session), killed at its budget; a stage that ends without its final
    record gets one saying so."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--run-stage",
        name,
        "--out",
        out,
        *(["--dry"] if dry else []),
        *[f"--budget={b}" for b in budget_flags],
    ]
    t0 = time.monotonic()
    with open(os.path.join(out, f"{name}.log"), "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the stage and whatever it started
            proc.wait()
            note = f"killed at its budget of {budget:g} s; rows so far kept"
            _mark(out, name, dry, budget, time.monotonic() - t0, "timeout", note)
    if not _finished(out, name):  # crashed (or killed) before writing its final record
        note = f"exited {proc.returncode} without a final record; see {name}.log"
        _mark(out, name, dry, budget, time.monotonic() - t0, "failed", note)


def _status(out, name):
    try:
        with open(os.path.join(out, f"{name}.json")) as f:
            return json.load(f)["status"]
    except (OSError, ValueError, KeyError):
        return None


def _finished(out, name):
    return _status(out, name) not in (None, "running")


def _mark(out, name, dry, budget, seconds, status, note):
    rows = []
    try:
        with open(os.path.join(out, f"{name}.json")) as f:
            rows = json.load(f)["rows"]
    except (OSError, ValueError, KeyError):
        pass
    write_json(
        os.path.join(out, f"{name}.json"),
        record(name, status, rows, dry=dry, budget=budget, seconds=seconds, note=note),
    )


if __name__ == "__main__":
    sys.exit(main())
