"""Checkpoints written in the background: the snapshot (host copies the next optimizer step cannot change), the
streamed safetensors and train state, the writer (one save in flight, errors raised on the training thread), and a
training run against a slow writer, a second Ctrl-C while it waits, and a real SIGKILL while the writer is
mid-write."""

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from safetensors.torch import load, load_file
from test_train import assert_same_run, configs, final_state, tiny_models

from fastpix import files
from fastpix.errors import DiskFull
from fastpix.store.checkpoint_set import read_manifest, verify_set
from fastpix.store.checkpoint_writer import CheckpointWriter
from fastpix.store.run_folder import TRAIN_STATE, RunFolder
from fastpix.store.snapshot import Snapshotter
from fastpix.store.weights import load_train_state, load_weights, safetensors_stream, weights_metadata
from fastpix.train import loop, progress
from fastpix.train.loop import train
from fastpix.train.step import Pix2PixStep

pytestmark = pytest.mark.usefixtures("one_thread")
TESTS = os.path.dirname(os.path.abspath(__file__))


def streamed(stream) -> bytes:
    buffer = io.BytesIO()
    stream.write(buffer)
    return buffer.getvalue()


def trained_step():
    G, D = tiny_models()
    G.to(memory_format=torch.channels_last)  # the layout of fastpix's CPU bf16 training: the writer makes it contiguous
    step = Pix2PixStep(G, D)
    step(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    return G, D, step


def train_state(step, iteration):
    return {
        "epoch": 1,
        "position": 2 * iteration,
        "iteration": iteration,
        "optimizers": step.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }


def test_safetensors_stream_is_read_back_by_safetensors(tmp_path):
    state = {
        "mask": torch.tensor([True, False, True]),
        "bf16": torch.randn(5, 3).bfloat16(),
        "conv": torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last),
        "count": torch.tensor(7),
        "empty": torch.zeros(0, 3),
        "half": torch.randn(3).half(),
        "double": torch.randn(2, dtype=torch.float64),
    }
    stream = safetensors_stream(state, {"iteration": 12})
    data = streamed(stream)
    assert len(data) == stream.nbytes
    path = str(tmp_path / "streamed.safetensors")
    with open(path, "wb") as f:
        f.write(data)
    for back in (load(data), load_file(path)):  # from bytes, and memory-mapped (each tensor aligned)
        assert back.keys() == state.keys()
        for name, tensor in state.items():
            assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    assert weights_metadata(path) == {"iteration": "12"}


def test_a_snapshot_is_the_state_when_taken_not_after_the_next_step():
    G, D, step = trained_step()
    expected = {
        "G": {k: v.clone() for k, v in G.state_dict().items()},
        "D": {k: v.clone() for k, v in D.state_dict().items()},
    }
    moments = [v.clone() for s in step.opt_G.state.values() for v in s.values()]
    taken = Snapshotter().take({"G": G, "D": D}, train_state(step, 1), tags=("1",))
    step(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))  # in place: parameters, moments, BN statistics
    written = {name: streamed(stream) for name, stream in taken.files().items()}
    assert sorted(written) == sorted(
        [
            "latest_net_G.safetensors",
            "latest_net_D.safetensors",
            "1_net_G.safetensors",
            "1_net_D.safetensors",
            TRAIN_STATE,
        ]
    )
    for net in ("G", "D"):
        back = load(written[f"latest_net_{net}.safetensors"])
        assert back.keys() == expected[net].keys()
        assert all(torch.equal(back[k], v) for k, v in expected[net].items()), net
        assert written[f"1_net_{net}.safetensors"] == written[f"latest_net_{net}.safetensors"]
    state = torch.load(io.BytesIO(written[TRAIN_STATE]), weights_only=True)
    assert state["iteration"] == 1 and state["position"] == 2
    saved = [v for s in state["optimizers"]["opt_G"]["state"].values() for v in s.values()]
    assert len(saved) == len(moments) and all(torch.equal(a, b) for a, b in zip(saved, moments))
    assert not all(torch.equal(a, b) for a, b in zip(saved, step.opt_G.state_dict()["state"][0].values()))


def test_snapshots_reuse_their_buffers():
    G, D, step = trained_step()
    snapshots = Snapshotter()
    first = snapshots.take({"G": G, "D": D}, train_state(step, 1))
    pointers = [t.data_ptr() for t in first.nets["G"].values()]
    step(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    second = snapshots.take({"G": G, "D": D}, train_state(step, 2))
    assert [t.data_ptr() for t in second.nets["G"].values()] == pointers
    assert all(torch.equal(second.nets["G"][k], v) for k, v in G.state_dict().items())


@pytest.mark.gpu
def test_a_gpu_snapshot_copies_into_pinned_memory_before_the_next_step():
    G, D = tiny_models()
    G, D = G.cuda(), D.cuda()
    step = Pix2PixStep(G, D, device_type="cuda")
    A, B = torch.randn(2, 3, 32, 32, device="cuda"), torch.randn(2, 3, 32, 32, device="cuda")
    step(A, B)
    expected = {k: v.cpu() for k, v in G.state_dict().items()}
    taken = Snapshotter().take({"G": G, "D": D}, train_state(step, 1))
    for _ in range(3):  # queued behind the copies on the same stream
        step(A, B)
    assert taken.copied is not None and all(t.is_pinned() for t in taken.nets["G"].values())
    back = load(streamed(taken.files()["latest_net_G.safetensors"]))
    assert all(torch.equal(back[k], v) for k, v in expected.items())


def test_a_failed_background_save_is_raised_on_the_callers_thread(tmp_path, monkeypatch):
    G, D, step = trained_step()
    run = RunFolder(str(tmp_path), "run")
    os.makedirs(run.dir)
    writer, snapshots = CheckpointWriter(run), Snapshotter()
    writer.submit(snapshots.take({"G": G, "D": D}, train_state(step, 1)))
    assert writer.wait() and read_manifest(run.dir)["iteration"] == 1
    threads = []

    def no_space(path, data):
        threads.append(threading.current_thread())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "_write_into", no_space)
    writer.submit(snapshots.take({"G": G, "D": D}, train_state(step, 2)))
    with pytest.raises(DiskFull, match="latest_net_G.safetensors: no space left on the device"):
        writer.wait()
    assert threads and threads[0] is not threading.main_thread()
    assert writer.wait()  # raised once
    monkeypatch.undo()
    assert read_manifest(run.dir)["iteration"] == 1
    verify_set(run.dir, read_manifest(run.dir))
    assert not [n for n in os.listdir(run.dir) if n.startswith(".tmp-")]


def slow_train_state_writes(monkeypatch, seconds):
    """Each train state is written `seconds` late, on the writer thread; returns the threads that wrote."""
    real, threads = files._write_into, []

    def slow(path, data):
        if path.endswith(TRAIN_STATE) and os.path.basename(path).startswith(".tmp-"):
            threads.append(threading.current_thread())
            time.sleep(seconds)
        real(path, data)

    monkeypatch.setattr(files, "_write_into", slow)
    return threads


@pytest.fixture(scope="module")
def whole(tiny_data, tmp_path_factory):
    return final_state(train(*configs(tiny_data, tmp_path_factory.mktemp("whole"), max_iters=7), progress=False))


def test_a_save_point_waits_for_the_save_in_flight_and_nothing_is_lost(tiny_data, tmp_path, monkeypatch, capsys, whole):
    threads = slow_train_state_writes(monkeypatch, 0.3)
    monkeypatch.setattr(loop, "SLOW_SAVE_S", 0.05)
    run = train(*configs(tiny_data, tmp_path, max_iters=7, save_latest_freq=1, save_by_iter=True), progress=False)
    out = capsys.readouterr().out
    assert "fastpix: waiting for the checkpoint of iteration 1 to be written…" in out  # at the save point of 2
    assert "fastpix: waiting for the checkpoint of iteration 7 to be written…" in out  # at the run's end
    assert threads and all(t is not threading.main_thread() for t in threads)
    weights = [load_weights(f"{run}/iter_{n}_net_G.safetensors") for n in range(1, 8)]
    for n, state in enumerate(weights, 1):
        assert weights_metadata(f"{run}/iter_{n}_net_G.safetensors")["iteration"] == str(n)
        if n > 1:  # each save holds its own iteration's weights, not a later one's
            assert not all(torch.equal(state[k], weights[n - 2][k]) for k in state)
    assert_same_run(whole, final_state(run))
    assert all(torch.equal(weights[-1][k], v) for k, v in whole[0].items())
    assert read_manifest(run)["iteration"] == 7 and not [n for n in os.listdir(run) if n.startswith(".tmp-")]


def test_a_second_ctrl_c_while_waiting_for_the_writer_abandons_its_save(tiny_data, tmp_path, monkeypatch):
    real_write, real_after = files._write_into, progress.Progress.after_iteration

    def second_ctrl_c_mid_save(path, data):
        if path.endswith(TRAIN_STATE) and load_train_state_iteration(data) == 3:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            time.sleep(0.5)  # the main thread abandons the save meanwhile
        real_write(path, data)

    def ctrl_c_at_3(self, engine, batch, cursor, *rest):
        real_after(self, engine, batch, cursor, *rest)
        if cursor.iteration == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(files, "_write_into", second_ctrl_c_mid_save)
    monkeypatch.setattr(progress.Progress, "after_iteration", ctrl_c_at_3)
    with pytest.raises(KeyboardInterrupt, match="interrupted twice"):
        train(*configs(tiny_data, tmp_path, max_iters=7, save_latest_freq=2, print_freq=100), progress=False)
    run = str(tmp_path / "run")
    assert read_manifest(run)["iteration"] == 2 and load_train_state(f"{run}/{TRAIN_STATE}")["iteration"] == 2
    verify_set(run, read_manifest(run))
    assert not [n for n in os.listdir(run) if n.startswith(".tmp-")]


def load_train_state_iteration(data) -> int:
    buffer = io.BytesIO()
    data(buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)["iteration"]


STALLED_WRITER = r"""
import io, json, os, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from fastpix import files, runtime
from fastpix.train.loop import train
from test_train import configs

tests, data, marker, checkpoints = sys.argv[1:]
runtime.cpu_has_native_bf16 = lambda: False  # fp32, as the suite's conftest makes the `whole` run
torch.set_num_threads(1)
real = files._write_into

def write(path, contents):
    if path.endswith("-latest_net_D.safetensors"):
        buffer = io.BytesIO()
        contents(buffer)
        head = buffer.getvalue()[8:8 + int.from_bytes(buffer.getvalue()[:8], "little")]
        if json.loads(head)["__metadata__"]["iteration"] == "4":
            real(path, buffer.getvalue()[:len(buffer.getvalue()) // 2])
            open(marker, "w").close()
            time.sleep(3600)  # the writer hangs halfway through the file; training goes on
    real(path, contents)

files._write_into = write
train(*configs(data, checkpoints, max_iters=7, save_latest_freq=3), progress=False)
"""


def test_a_sigkill_while_the_writer_is_mid_write_leaves_the_previous_set(tiny_data, tmp_path, whole):
    """Saves at 3 (committed), then at 4 (the epoch's end): its writer hangs halfway through latest_net_D while
    training goes on to iteration 6, whose save point waits for it; SIGKILL then. The set of 3 stands, and resuming
    from it gives the uninterrupted run, bit for bit."""
    marker, run = str(tmp_path / "mid-write"), str(tmp_path / "run")
    child = subprocess.Popen(
        [sys.executable, "-c", STALLED_WRITER, TESTS, tiny_data, marker, str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )

    def logged():
        if not os.path.exists(f"{run}/metrics.jsonl"):
            return []
        return [json.loads(line)["iter"] for line in open(f"{run}/metrics.jsonl")]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None and not (os.path.exists(marker) and 6 in logged()):
        time.sleep(0.05)
    assert child.poll() is None, child.stderr.read().decode()
    child.kill()
    child.wait()
    assert os.path.exists(marker) and 6 in logged()  # training went on while the writer was stuck in the save of 4
    assert read_manifest(run)["iteration"] == 3
    assert [n for n in os.listdir(run) if n.startswith(".tmp-")]  # the cut save's temporaries, until recover
    resumed = train(*configs(tiny_data, tmp_path, max_iters=7, continue_train=True), progress=False)
    assert not [n for n in os.listdir(run) if n.startswith(".tmp-")]
    assert_same_run(whole, final_state(resumed))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_the_writer_thread_runs_below_the_training_threads_and_leaves_them_alone():
    from fastpix.store.checkpoint_writer import WRITER_NICE, lower_priority

    before = os.getpriority(os.PRIO_PROCESS, 0)
    seen = []

    def writer():
        lower_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, 0))  # 0: the calling thread, on Linux

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join()
    assert seen == [max(before, WRITER_NICE)] and os.getpriority(os.PRIO_PROCESS, 0) == before
