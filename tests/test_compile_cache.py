"""Nothing waits for the compiler, and the caches stay bounded: the compiled runtime's background builds (with a
stand-in compiler: real builds are in test_cpu_fast_path.py), failed builds remembered, packages checked before use,
the bound on loaded packages, the compiled cache's and the decode caches' LRU bounds with in-use protection across
processes, `fastpix cache list|clear`, /readyz while building, and the messages."""

import contextlib
import json
import logging
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest
import torch
from tiny_models import perturb_batchnorms

from fastpix import progress
from fastpix.cache_folders import Lease
from fastpix.cli import main
from fastpix.data import cache, cache_entries
from fastpix.data.cache import PairCache
from fastpix.data.dataset import PairedDataset
from fastpix.data.demo import write_demo_dataset
from fastpix.files import atomic_write_json
from fastpix.infer import compiled_builds, compiled_cache
from fastpix.infer.compiled_packages import Package, package_metadata
from fastpix.infer.predictor import Predictor
from fastpix.models import define_G

pytestmark = pytest.mark.usefixtures("one_thread")
TIMEOUT_S = 30


def tiny_G(seed=0):
    torch.manual_seed(seed)
    return perturb_batchnorms(define_G(3, 3, 8, "unet_32", "batch", True, backend="eager"))


class StandIn:
    """Stands in for the compiler process: 'builds' a package file that records what it was asked for (its shape,
    dtype and key, or `wrong_shape` instead), after `gate` opens; or fails with `error`. Loaded by `load`, its
    package answers -1 everywhere, so that a test sees which calls ran it."""

    calls: list = []
    error: str | None = None
    wrong_shape = None
    gate: threading.Event | None = None
    stopped = False

    constructed_while: list = []  # the calls of the network running when each was made
    priorities: list = []  # each one's priority
    starving = False  # a child at the lowest priority gets no CPU (a saturated server)

    def __init__(self, net, priority):
        self.priority = priority
        StandIn.constructed_while.append(StandIn.runner_calls())
        StandIn.priorities.append(priority)

    runner_calls = staticmethod(lambda: 0)

    def build(self, shape, dtype, path, key, build_parent, patient=True):
        StandIn.calls.append(tuple(shape))
        if StandIn.starving and not patient:
            raise compiled_builds.Starved(0.01)
        if StandIn.gate is not None:
            assert StandIn.gate.wait(TIMEOUT_S)
        if self.stopped:
            return "the compiler process ended (killed by signal 15)"
        if StandIn.error is not None:
            return StandIn.error
        atomic_write_json(path, package_metadata(StandIn.wrong_shape or shape, dtype, key))
        return None

    def stop(self, at_once=False):
        if at_once:  # as the real one: a build in progress ends at once
            self.stopped = True
            if StandIn.gate is not None:
                StandIn.gate.set()

    @staticmethod
    def load(path):
        with open(path) as f:
            metadata = json.load(f)  # a file that is not a stand-in package raises: "does not load"
        return Package(lambda x: -torch.ones_like(x), metadata)


@pytest.fixture
def stand_in(monkeypatch):
    StandIn.calls, StandIn.error, StandIn.wrong_shape, StandIn.gate, StandIn.stopped = [], None, None, None, False
    StandIn.constructed_while, StandIn.priorities, StandIn.starving = [], [], False
    monkeypatch.setattr(compiled_builds, "CompilerProcess", StandIn)
    monkeypatch.setattr(compiled_builds, "load_package", StandIn.load)
    return StandIn


def compiled_predictor(cache, **kw):
    return Predictor(
        tiny_G(), device="cpu", precision="fp32", norm_mode="running", runtime="compiled", cache_dir=str(cache), **kw
    )


def image(h=32, w=32, seed=1):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_a_call_never_waits_the_package_runs_from_a_later_call(tmp_path, stand_in):
    stand_in.gate = threading.Event()  # the "compiler" is busy until the test says so
    predictor = compiled_predictor(tmp_path)
    eager = Predictor(tiny_G(), device="cpu", precision="fp32", norm_mode="running", runtime="eager")
    x = image()
    first = predictor(x, output_type="pt")  # answered while the build has not even finished
    assert torch.allclose(first, eager(x, output_type="pt"), atol=1e-5)
    assert predictor.compile_status() == {"compiled": [], "building": ["1x32x32"], "failed": {}}
    assert "1x32x32 building" in predictor.description
    predictor(x, output_type="pt")  # asked again while building: not queued twice
    stand_in.gate.set()
    assert predictor.runner.wait(TIMEOUT_S)
    assert stand_in.calls == [(1, 3, 32, 32)]
    assert predictor.compile_status() == {"compiled": ["1x32x32"], "building": [], "failed": {}}
    assert (predictor(x, output_type="pt") == -1).all()  # the package ran
    predictor.close()


class Blocking(torch.nn.Module):
    """A network whose eager forward waits for `release`: a request still running."""

    entered = threading.Event()
    release = threading.Event()

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x):
        Blocking.entered.set()
        assert Blocking.release.wait(TIMEOUT_S)
        return self.conv(x)


def test_the_parents_share_of_a_build_waits_until_the_request_that_asked_for_it_is_answered(tmp_path, stand_in):
    """Starting the compiler process (pickling the network into it) is CPU work in the serving process: it waits
    for no call to be running, so the request of a new size is not slowed by the build it asked for."""
    from fastpix.infer.compiled import CompiledNetwork

    Blocking.entered.clear(), Blocking.release.clear()
    runner = CompiledNetwork(Blocking(), "running", "fp32", cache_dir=str(tmp_path))
    stand_in.runner_calls = staticmethod(lambda: runner._calls)
    call = threading.Thread(target=runner, args=(torch.rand(1, 3, 8, 8),))
    call.start()
    assert Blocking.entered.wait(TIMEOUT_S)  # the call is running; its shape has been asked for
    time.sleep(0.3)
    assert stand_in.constructed_while == []  # the builder waits ...
    Blocking.release.set()
    call.join(TIMEOUT_S)
    assert runner.wait(TIMEOUT_S)
    assert stand_in.constructed_while == [0] and stand_in.calls == [(1, 3, 8, 8)]  # ... then starts, between calls
    runner.close()


def test_a_failed_build_is_said_once_remembered_on_disk_and_not_retried(tmp_path, stand_in, caplog, monkeypatch):
    stand_in.error = "RuntimeError: no C++ compiler"
    predictor = compiled_predictor(tmp_path)
    x = image()
    with caplog.at_level(logging.INFO, logger="fastpix"):
        want = predictor(x, output_type="pt")
        assert predictor.runner.wait(TIMEOUT_S)
        assert torch.equal(predictor(x, output_type="pt"), want)  # that size stays eager
        predictor.runner.wait(TIMEOUT_S)
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert failures == [
        "compiling the generator for 1x32x32 failed (RuntimeError: no C++ compiler); that size runs eagerly"
    ]
    assert stand_in.calls == [(1, 3, 32, 32)]
    assert "1x32x32 failed (RuntimeError: no C++ compiler)" in predictor.description
    marker = compiled_cache.failure_path(predictor.runner.folder, (1, 3, 32, 32))
    assert json.loads(pathlib.Path(marker).read_text())["error"] == "RuntimeError: no C++ compiler"
    # Another run of the same torch and fastpix does not try again ...
    again = compiled_predictor(tmp_path)
    again(x, output_type="pt")
    assert again.runner.wait(TIMEOUT_S) and stand_in.calls == [(1, 3, 32, 32)]
    assert "no C++ compiler" in again.compile_status()["failed"]["1x32x32"]
    # ... a new fastpix (or torch) does.
    monkeypatch.setattr(compiled_cache, "FASTPIX_VERSION", "0.0.0-next")
    newer = compiled_predictor(tmp_path)
    newer(x, output_type="pt")
    assert newer.runner.wait(TIMEOUT_S) and stand_in.calls == [(1, 3, 32, 32)] * 2
    for p in (predictor, again, newer):
        p.close()


def test_a_package_for_another_shape_or_an_unreadable_one_is_built_again(tmp_path, stand_in, caplog):
    predictor = compiled_predictor(tmp_path)
    path = compiled_cache.package_path(predictor.runner.folder, (1, 3, 32, 32))
    os.makedirs(os.path.dirname(path))
    atomic_write_json(path, package_metadata((1, 3, 64, 64), torch.float32, predictor.runner.key))  # copied here
    with caplog.at_level(logging.INFO, logger="fastpix"):
        predictor(image(), output_type="pt")
        assert predictor.runner.wait(TIMEOUT_S)
    assert "it was built for 1x3x64x64 torch.float32" in caplog.text and "building it again" in caplog.text
    assert stand_in.calls == [(1, 3, 32, 32)] and (predictor(image(), output_type="pt") == -1).all()
    predictor.close()
    with open(path, "r+b") as f:
        f.truncate(10)  # a disk that filled up, a copy cut short
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fastpix"):
        again = compiled_predictor(tmp_path)
        assert again.runner.wait(TIMEOUT_S)
    assert "does not load" in caplog.text and stand_in.calls == [(1, 3, 32, 32)] * 2
    assert again.compile_status()["compiled"] == ["1x32x32"]
    # A "compiler" that keeps writing the wrong shape: said, that size stays eager, never an out-of-bounds run.
    stand_in.wrong_shape = (1, 3, 64, 64)
    again(image(64, 32), output_type="pt")
    again.runner.wait(TIMEOUT_S)
    assert "1x64x32" in again.compile_status()["failed"] and again.compile_status()["compiled"] == ["1x32x32"]
    again.close()


def test_at_most_max_loaded_packages_stay_loaded_the_least_recently_used_dropped(tmp_path, stand_in):
    predictor = compiled_predictor(tmp_path, max_loaded_packages=2)
    for h in (32, 64, 96):
        predictor(image(h), output_type="pt")
        assert predictor.runner.wait(TIMEOUT_S)
        predictor(image(32), output_type="pt")  # 32x32 used last, each time
    assert predictor.compile_status()["compiled"] == ["1x32x32", "1x96x32"]  # 64x32 was the least recently used
    in_use = {e.what.rsplit(", ", 2)[-2]: e.in_use for e in compiled_cache.entries(tmp_path)}
    assert in_use == {"32x32": True, "64x32": False, "96x32": True}
    predictor.close()
    assert not any(e.in_use for e in compiled_cache.entries(tmp_path))  # close() lets go of every package


def fake_package(root, key, name, nbytes, age_s):
    folder = os.path.join(root, key)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(b"\0" * nbytes)
    when = time.time() - age_s
    os.utime(path, (when, when))
    return path


def test_the_compiled_cache_bound_removes_the_least_recently_used_first_never_a_leased_one(tmp_path):
    root = str(tmp_path)
    oldest = fake_package(root, "k1", "1x256x256.pt2", 1000, age_s=400)
    leased = fake_package(root, "k1", "2x256x256.pt2", 1000, age_s=300)
    older = fake_package(root, "k2", "1x256x256.pt2", 1000, age_s=200)
    newest = fake_package(root, "k3", "1x256x256.pt2", 1000, age_s=100)
    compiled_cache.remember_failure(os.path.join(root, "k2"), (1, 3, 64, 64), "RuntimeError: x")
    dead = os.path.join(root, ".build-999999999-abcd")  # a killed build's Inductor files
    alive = os.path.join(root, f".build-{os.getpid()}-abcd")  # a build in progress
    for folder in (dead, alive):
        os.makedirs(folder)
    lease = Lease(leased)  # used by this process (and so touched: now the most recent, it is also protected)
    os.utime(leased, (time.time() - 300,) * 2)
    removed = compiled_cache.prune(2000, root)
    assert [e.lock for e in removed] == [oldest, older]  # least recently used first, the leased one skipped
    assert os.path.exists(leased) and os.path.exists(newest)
    assert not os.path.exists(dead) and os.path.exists(alive)
    assert compiled_cache.failures(root)  # the failed build is still remembered (k2 kept for it)
    lease.release()
    compiled_cache.prune(0, root)
    assert not os.path.exists(leased)


HOLDER = """
import sys
from fastpix.cache_folders import Lease
lease = Lease(sys.argv[1])
print("held", flush=True)
sys.stdin.readline()
"""


def test_a_package_loaded_by_another_process_is_not_removed_by_this_one(tmp_path):
    root = str(tmp_path)
    held = fake_package(root, "k1", "1x32x32.pt2", 100, age_s=100)
    free = fake_package(root, "k2", "1x32x32.pt2", 100, age_s=10)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, held], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        removed, kept = compiled_cache.clear(root)
        assert [e.lock for e in removed] == [free] and [e.lock for e in kept] == [held]
        assert os.path.exists(held) and not os.path.exists(free)
    finally:
        holder.communicate("\n", timeout=TIMEOUT_S)
    compiled_cache.prune(0, root)  # the holder has exited: the kernel dropped its lock with it
    assert not os.path.exists(held)


@contextlib.contextmanager
def slow_waits(monkeypatch):
    """Every wait counts as long, so that its messages show (a tiny data set builds its cache in milliseconds)."""
    real = progress.announced
    with monkeypatch.context() as patch:
        patch.setattr(cache, "announced", lambda log, what: real(log, what, after_s=0.0))
        yield


def pairs(root, name, n=8):
    return PairedDataset(write_demo_dataset(os.path.join(root, name), 32, {"train": n}), load_size=32, crop_size=32)


def test_decode_caches_are_bounded_least_recently_used_first_never_the_one_in_use(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    one, two, three = (pairs(str(tmp_path), name) for name in ("one", "two", "three"))
    with caplog.at_level(logging.INFO, logger="fastpix"), slow_waits(monkeypatch):
        PairCache(one, progress=False)
    assert "building the decode cache of 8 pairs" in caplog.text and "reuse it): done in" in caplog.text
    in_use = PairCache(two, progress=False)
    size = cache_entries.entries()[0].nbytes
    for entry, age in zip(sorted(cache_entries.entries(), key=lambda e: e.what), (100, 200)):  # two older than one
        os.utime(entry.lock, (time.time() - age,) * 2)
    PairCache(three, progress=False, max_bytes=2.5 * size)  # room for two: the oldest not in use goes
    left = sorted(e.what.split(",")[0] for e in cache_entries.entries())
    assert left == sorted([os.path.abspath(three.dataroot), os.path.abspath(two.dataroot)])
    assert PairCache(two, progress=False).hit and in_use.a.shape[0] == 8
    del in_use
    with pytest.warns(UserWarning, match=r"over --cache_max_gb 1e-06: caching in memory only"):
        alone = PairCache(one, progress=False, max_bytes=1000)
    assert not alone.hit and alone.a.shape == (8, 32, 32, 3)


def test_cache_list_and_clear_show_both_caches_and_keep_what_is_in_use(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    compiled_root = tmp_path / "cache" / "fastpix" / "compiled"
    package = fake_package(str(compiled_root), "k1", "2x256x512.pt2", 1000, age_s=60)
    compiled_cache.describe(
        os.path.dirname(package),
        {
            "source": "checkpoints/facades (latest)",
            "network": "UnetGenerator",
            "norm_mode": "instance",
            "precision": "bf16",
        },
    )
    compiled_cache.remember_failure(os.path.dirname(package), (1, 3, 64, 64), "RuntimeError: no C++ compiler")
    used = PairCache(pairs(str(tmp_path), "facades"), progress=False)
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert f"compiled generators: {compiled_root}: 1 entries" in out
    assert "checkpoints/facades (latest), UnetGenerator, norm_mode instance, bf16, 256x512, batch piece 2" in out
    assert "failed build" in out and "no C++ compiler" in out
    assert f"{tmp_path / 'facades'}, 8 pairs, load_size 32, AtoB, channels 3/3" in out and ", in use" in out
    assert main(["cache", "list", "--compiled"]) == 0 and "decode caches" not in capsys.readouterr().out
    assert main(["cache", "clear"]) == 1  # the data set in use was kept, and said so
    out = capsys.readouterr().out
    assert "compiled generators: 1 entries removed (1.0 kB)" in out and "kept, in use by a running process" in out
    assert not compiled_cache.entries() and not compiled_cache.failures() and len(cache_entries.entries()) == 1
    del used
    assert main(["cache", "clear", "--pairs"]) == 0 and not cache_entries.entries()


def test_readyz_is_ready_at_once_and_says_which_sizes_are_compiled_and_building(tmp_path, stand_in, caplog):
    pytest.importorskip("fastapi")
    from test_server import request, wait_until

    from fastpix.config import ServeConfig
    from fastpix.infer.server import BackgroundServer, create_app

    stand_in.gate = threading.Event()
    predictor = compiled_predictor(tmp_path, max_batch_size=2)
    with (
        caplog.at_level(logging.INFO, logger="fastpix"),
        BackgroundServer(create_app(predictor, ServeConfig(canvas_size=32, max_batch_size=2))) as server,
    ):
        wait_until(lambda: request(f"{server.url}/readyz")[0] == 200, "readiness while compiling")
        body = json.loads(request(f"{server.url}/readyz")[2])
        assert body["compiled"] == {"compiled": [], "building": ["1x32x32", "2x32x32"], "failed": {}}
        assert "1x32x32, 2x32x32 building; other sizes eager until built" in body["runtime"]
        stand_in.gate.set()
        assert predictor.runner.wait(TIMEOUT_S)
        body = json.loads(request(f"{server.url}/readyz")[2])
        assert body["compiled"]["compiled"] == ["1x32x32", "2x32x32"] and body["compiled"]["building"] == []
    assert "warming up at 32x32" in caplog.text and "warm-up done in" in caplog.text
    assert "compiled and loaded: 1x32x32, 2x32x32" in caplog.text
    predictor.close()


def test_serve_builds_its_warmup_sizes_from_the_start_and_refuses_a_bad_one_in_one_line(tmp_path, stand_in, caplog):
    """--warmup-sizes: each size's packages are asked for at start, after the canvas's (smallest piece first), so
    their first requests run compiled once built; a size that is not WxH or that the server would refuse is a
    ConfigError naming the flag, before anything starts."""
    pytest.importorskip("fastapi")
    from test_server import request, wait_until

    from fastpix.config import ServeConfig
    from fastpix.errors import ConfigError
    from fastpix.infer.server import BackgroundServer, create_app

    predictor = compiled_predictor(tmp_path, max_batch_size=1)
    with pytest.raises(
        ConfigError, match=r"^--warmup-sizes: '48by40' is not WIDTHxHEIGHT in pixels \(e\.g\. 320x240\)$"
    ):
        create_app(predictor, ServeConfig(canvas_size=32, warmup_sizes="48x40,48by40"))
    with pytest.raises(
        ConfigError, match=r"^--warmup-sizes: 70x40 pads to 96x64 = 6144 pixels, over --max-pixels 5000$"
    ):
        create_app(predictor, ServeConfig(canvas_size=32, max_pixels=5000, warmup_sizes="70x40"))
    config = ServeConfig(canvas_size=32, max_batch_size=1, warmup_sizes=" 48x40, 64x32 ")
    with caplog.at_level(logging.INFO, logger="fastpix"), BackgroundServer(create_app(predictor, config)) as server:
        wait_until(lambda: request(f"{server.url}/readyz")[0] == 200, "readiness")
        assert predictor.runner.wait(TIMEOUT_S)
    assert stand_in.calls == [(1, 3, 32, 32), (1, 3, 64, 64), (1, 3, 32, 64)]  # 48x40 pads to 64x64 (unet_32)
    assert "warming up at 32x32, 48x40, 64x32" in caplog.text
    predictor.close()


def test_predict_passes_the_cache_flags_and_says_what_it_compiles_in_the_background(
    tmp_path, stand_in, monkeypatch, capsys
):
    from PIL import Image

    from fastpix.store.weights import save_weights

    save_weights(str(tmp_path / "g.safetensors"), tiny_G())
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    seen = {}
    real = Predictor.__init__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        real(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "__init__", spy)
    stand_in.gate = threading.Event()  # still compiling when predict ends
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(tmp_path / "g.safetensors"),
                "--input",
                str(tmp_path / "a.png"),
                "--output",
                str(tmp_path / "out"),
                "--runtime",
                "compiled",
                "--precision",
                "fp32",
                "--quiet",
                "--compile-cache-max-gb",
                "0.5",
                "--max-loaded-packages",
                "3",
                "--compile-cache-dir",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    assert (seen["cache_max_gb"], seen["max_loaded_packages"], seen["cache_dir"]) == (0.5, 3, str(tmp_path / "c"))
    captured = capsys.readouterr()
    assert "fastpix predict: compiling the generator for batch piece 1 at 32x32 in the background" in captured.err
    assert "fastpix predict: stopped compiling 1x32x32 (a later run compiles it)" in captured.err
    assert "1 images written" in captured.out
    assert not compiled_cache.failures(str(tmp_path / "c"))  # a build stopped is not a build that failed


def test_the_compiler_process_lowers_its_priority_before_importing_torch():
    """Importing torch is a second or more of CPU: the child's module imports nothing heavy before main() has
    lowered its priority."""
    code = "import sys, fastpix.infer.compiler_child; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's: elsewhere the child runs at nice 19")
def test_the_compiler_process_runs_at_sched_idle():
    from fastpix.infer.compiled import prepared_network

    net, _ = prepared_network(tiny_G(), "fp32")
    child = compiled_builds.CompilerProcess(net, compiled_builds.BUILD_PRIORITY)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while os.sched_getscheduler(child.proc.pid) != os.SCHED_IDLE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.sched_getscheduler(child.proc.pid) == os.SCHED_IDLE
    finally:
        child.stop(at_once=True)


def test_the_network_reaches_the_compiler_process_whole():
    """network_file / receive_network (the child's copy of the network): every tensor equal, with its dtype and
    layout (channels-last, bf16), tensors sharing a storage still sharing it, and the same outputs."""
    from fastpix.infer.compiled import prepared_network
    from fastpix.infer.compiler_child import network_file, receive_network

    net, dtype = prepared_network(tiny_G(), "bf16")
    net.shared = torch.nn.Parameter(net.model.model[0].weight.detach()[:1], requires_grad=False)  # a view of one
    fd, structure = network_file(net)
    try:
        got = receive_network(structure, fd)
    finally:
        os.close(fd)
    want_state, got_state = net.state_dict(), got.state_dict()
    assert list(got_state) == list(want_state)
    for name, t in want_state.items():
        assert got_state[name].dtype == t.dtype and got_state[name].stride() == t.stride(), name
        assert torch.equal(got_state[name], t), name
    assert got.shared.untyped_storage().data_ptr() == got.model.model[0].weight.untyped_storage().data_ptr()
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert torch.equal(got(x), net(x))


def test_a_build_starved_by_a_busy_server_starts_again_at_nice_10(tmp_path, stand_in, caplog):
    """At SCHED_IDLE a build beside a server that is never idle gets next to nothing: it is started again in a child
    at BUSY_PRIORITY, so that a saturated server still reaches compiled speed, and says so."""
    stand_in.starving = True
    predictor = compiled_predictor(tmp_path)
    with caplog.at_level(logging.INFO, logger="fastpix"):
        predictor(image(), output_type="pt")
        assert predictor.runner.wait(TIMEOUT_S)
    assert stand_in.priorities == [compiled_builds.BUILD_PRIORITY, compiled_builds.BUSY_PRIORITY] == ["idle", "10"]
    assert stand_in.calls == [(1, 3, 32, 32)] * 2
    assert predictor.compile_status() == {"compiled": ["1x32x32"], "building": [], "failed": {}}
    assert "compiling 1x32x32 got 1% of a core in the last 60 s (the cores are busy serving)" in caplog.text
    predictor.close()


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="a process's CPU time is read from Linux's /proc")
def test_the_compiler_process_says_when_it_is_starved(monkeypatch):
    """CompilerProcess.build (not patient) checks the child's share of a core every STARVED_AFTER_S: here the
    child's CPU time is made to stand still, as beside a saturated server."""
    from fastpix.infer.compiled import prepared_network

    assert compiled_builds.process_cpu_s(os.getpid()) > 0  # read from /proc: this process has run
    monkeypatch.setattr(compiled_builds, "STARVED_AFTER_S", 0.2)
    monkeypatch.setattr(compiled_builds, "process_cpu_s", lambda pid: 1.0)
    net, dtype = prepared_network(tiny_G(), "fp32")
    child = compiled_builds.CompilerProcess(net, "idle")
    try:
        with pytest.raises(compiled_builds.Starved) as starved:
            child.build((1, 3, 32, 32), dtype, "/nonexistent/never.pt2", "k", "/nonexistent", patient=False)
        assert starved.value.args == (0.0,)
    finally:
        child.stop(at_once=True)
