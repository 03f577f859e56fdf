"""Training under faults (a save cut short, a full disk, signals, a real SIGKILL, unreadable data) and the reference
user's training flags (--continue_train from bare weights, --save_by_iter, --load_iter, --serial_batches,
--use_wandb)."""

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import types

import pytest
import torch
from PIL import Image
from test_checkpoint import written
from test_train import assert_same_run, configs, final_state

from fastpix import files
from fastpix.errors import CheckpointError, DiskFull
from fastpix.models import define_D, define_G
from fastpix.store.checkpoint_set import MANIFEST, read_manifest, recover
from fastpix.store.run_folder import TRAIN_STATE, RunFolder
from fastpix.store.weights import load_train_state, save_weights, weights_metadata
from fastpix.train import loop, progress
from fastpix.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(BaseException):
    """Stands for a kill: nothing in the code under test catches it."""


def saved_iteration(data: bytes) -> int | None:
    """The iteration a safetensors file's metadata records (fastpix writes it into every checkpoint's weights)."""
    size = int.from_bytes(data[:8], "little")
    return int(json.loads(data[8 : 8 + size]).get("__metadata__", {}).get("iteration", -1))


def fail_in_save(monkeypatch, iteration, error):
    """The save of `iteration` raises `error` while writing its second file (after latest_net_G); returns the
    threads it was raised in (the background writer's)."""
    real, failed = files._write_into, []

    def write(path, data):
        if path.endswith("-latest_net_D.safetensors") and saved_iteration(written(data)) == iteration:
            failed.append(threading.current_thread())
            raise error
        real(path, data)

    monkeypatch.setattr(files, "_write_into", write)
    return failed


@pytest.fixture(scope="module")
def whole(tiny_data, tmp_path_factory):
    """7 iterations in one run: what every interrupted-and-resumed run below must equal, bit for bit."""
    return final_state(train(*configs(tiny_data, tmp_path_factory.mktemp("whole"), max_iters=7), progress=False))


@pytest.mark.parametrize("error", [Killed(), OSError(errno.ENOSPC, "No space left on device")])
def test_a_save_cut_short_resumes_from_the_last_whole_one(tiny_data, tmp_path, monkeypatch, whole, error):
    failed = fail_in_save(monkeypatch, 4, error)
    real_plot = progress.write_loss_plot

    def plot(*args):  # the disk is full for the final loss plot too
        if failed:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_plot(*args)

    monkeypatch.setattr(progress, "write_loss_plot", plot)
    with pytest.raises(type(error) if isinstance(error, Killed) else DiskFull) as info:
        train(*configs(tiny_data, tmp_path, max_iters=7, save_latest_freq=1, display_freq=100), progress=False)
    if not isinstance(error, Killed):  # one line naming the file and the bytes, not the loss plot's second error
        assert "latest_net_D.safetensors: no space left on the device (the write needs" in str(info.value)
        assert "\n" not in str(info.value)
    assert failed and failed[0] is not threading.main_thread()  # in the background writer, raised on this thread
    monkeypatch.undo()
    run = str(tmp_path / "run")
    assert read_manifest(run)["iteration"] == 3
    # the failed save of 4 stops the run after iteration 5 at the latest (its save point waits for the writer)
    iters = [json.loads(line)["iter"] for line in pathlib.Path(f"{run}/metrics.jsonl").read_text().splitlines()]
    assert iters in ([1, 2, 3, 4], [1, 2, 3, 4, 5])
    resumed = train(*configs(tiny_data, tmp_path, max_iters=7, continue_train=True), progress=False)
    assert_same_run(whole, final_state(resumed))
    iters = [json.loads(line)["iter"] for line in pathlib.Path(f"{run}/metrics.jsonl").read_text().splitlines()]
    assert iters == list(range(1, 8))
    assert Image.open(f"{run}/loss.png").size[0] > 500


def test_a_kill_inside_a_second_save_of_the_same_iteration_keeps_the_first(tiny_data, tmp_path, monkeypatch, whole):
    """An epoch that ends on a --save_latest_freq multiple is saved twice at one iteration (4 here: 4 iterations an
    epoch). A kill halfway through writing the second save's latest_net_G must leave the first save to resume from:
    the second save's temporaries are its own, and recovery renames nothing whose hash is not the manifest's."""
    real, attempts = files._write_into, []

    def write(path, data):
        if path.endswith("-latest_net_G.safetensors") and saved_iteration(written(data)) == 4:
            attempts.append(path)
            if len(attempts) == 2:
                data = written(data)
                real(path, data[: len(data) // 2])
                raise Killed()
        real(path, data)

    monkeypatch.setattr(files, "_write_into", write)
    with pytest.raises(Killed):
        train(*configs(tiny_data, tmp_path, max_iters=7, save_latest_freq=4), progress=False)
    monkeypatch.undo()
    assert len(attempts) == 2 and read_manifest(str(tmp_path / "run"))["iteration"] == 4
    resumed = train(*configs(tiny_data, tmp_path, max_iters=7, continue_train=True), progress=False)
    assert_same_run(whole, final_state(resumed))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_at_the_next_iteration_with_a_checkpoint(
    tiny_data, tmp_path, monkeypatch, capsys, whole, signum
):
    """The stop's save is written in the background: the run waits for it, says so, and it is committed."""
    real, real_write = progress.Progress.after_iteration, files._write_into

    def signal_at_3(self, engine, batch, cursor, *rest):
        real(self, engine, batch, cursor, *rest)
        if cursor.iteration == 3:
            os.kill(os.getpid(), signum)

    def slow_write(path, data):
        time.sleep(0.1)
        real_write(path, data)

    monkeypatch.setattr(progress.Progress, "after_iteration", signal_at_3)
    monkeypatch.setattr(files, "_write_into", slow_write)
    with pytest.raises(KeyboardInterrupt, match=f"{signal.Signals(signum).name}: stopped after iteration 3"):
        train(*configs(tiny_data, tmp_path, max_iters=7, print_freq=100), progress=False)
    monkeypatch.undo()
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if "waiting" in line] == [
        "fastpix: waiting for the checkpoint of iteration 3 to be written…"
    ]
    assert read_manifest(str(tmp_path / "run"))["iteration"] == 3
    assert load_train_state(f"{tmp_path}/run/latest_train_state.pt")["iteration"] == 3
    resumed = train(*configs(tiny_data, tmp_path, max_iters=7, continue_train=True), progress=False)
    assert_same_run(whole, final_state(resumed))


def test_a_second_ctrl_c_stops_at_once(tiny_data, tmp_path, monkeypatch):
    def twice(self, engine, batch, cursor, *rest):
        if cursor.iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(progress.Progress, "after_iteration", twice)
    with pytest.raises(KeyboardInterrupt, match="interrupted twice"):
        train(*configs(tiny_data, tmp_path, max_iters=7, print_freq=100), progress=False)
    assert not os.path.exists(f"{tmp_path}/run/latest_train_state.pt")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back


def tiny_train_argv(tiny_data, tmp_path, *flags: str) -> list[str]:
    """`fastpix train` of a tiny U-Net on tiny_data into tmp_path/run, in a child process, running until stopped."""
    tiny = "--netG unet_32 --ngf 4 --ndf 4 --load_size 32 --crop_size 32 --max_iters 100000 --quiet --num_threads 0"
    return [
        sys.executable,
        "-m",
        "fastpix",
        "train",
        "--dataroot",
        tiny_data,
        "--name",
        "run",
        "--checkpoints_dir",
        str(tmp_path),
        *tiny.split(),
        *flags,
    ]


def test_a_real_sigkill_during_saves_resumes(tiny_data, tmp_path):
    args = tiny_train_argv(tiny_data, tmp_path, "--save_latest_freq", "1")
    child = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    manifest = tmp_path / "run" / MANIFEST
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if manifest.exists() and json.loads(manifest.read_text() or "{}").get("iteration", 0) >= 3:
            break
        time.sleep(0.05)
    assert child.poll() is None, child.stderr.read().decode()
    time.sleep(0.1)
    child.kill()
    child.wait()
    from fastpix.config import DataConfig, ModelConfig, TrainConfig

    cfgs = (
        ModelConfig(netG="unet_32", ngf=4, ndf=4),
        DataConfig(dataroot=tiny_data, load_size=32, crop_size=32, num_threads=0),
    )
    saved = RunFolder(str(tmp_path), "run")
    recover(saved.dir)
    at = load_train_state(saved.path(TRAIN_STATE))["iteration"]
    run = train(
        *cfgs,
        TrainConfig(name="run", checkpoints_dir=str(tmp_path), continue_train=True, max_iters=at + 2),
        progress=False,
    )
    assert load_train_state(f"{run}/latest_train_state.pt")["iteration"] == at + 2
    assert not [n for n in os.listdir(run) if n.startswith(".tmp-")]


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signalled_train_exits_128_plus_the_signal_with_one_line(tiny_data, tmp_path, signum, status):
    args = tiny_train_argv(tiny_data, tmp_path, "--print_freq", "1")
    child = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    metrics, deadline = tmp_path / "run" / "metrics.jsonl", time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None and not (metrics.exists() and metrics.read_text()):
        time.sleep(0.05)
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    at = read_manifest(str(tmp_path / "run"))["iteration"]
    line = (
        f"fastpix train: {signal.Signals(signum).name}: stopped after iteration {at}, checkpoint saved in "
        f"{tmp_path / 'run'} (resume with --continue_train)"
    )
    assert child.returncode == status and err.splitlines() == [line], err


def test_no_readable_image_is_an_error_not_an_untrained_checkpoint(tmp_path):
    os.makedirs(tmp_path / "data" / "train")
    for k in range(3):
        (tmp_path / "data" / "train" / f"{k}.jpg").write_bytes(b"not a jpeg")
    model, data, cfg = configs(str(tmp_path / "data"), tmp_path, max_iters=4)
    data.skip_bad_images, data.data_pipeline = True, "loader"
    with pytest.raises(loop.DataError, match="train: none of its 3 images could be read"):
        train(model, data, cfg, progress=False)
    assert not os.path.exists(f"{tmp_path}/run/latest_net_G.safetensors")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("nets", ["G", "GD"])
def test_continue_train_from_weights_alone(tiny_data, tmp_path, capsys, suffix, nets):
    """A reference run or a pretrained model: weights without a train state train with fresh optimizers."""
    given = {"G": define_G(3, 3, 4, "unet_64", "batch", True), "D": define_D(6, 4, "basic")}
    os.makedirs(tmp_path / "run")
    for net in nets:
        save_weights(str(tmp_path / "run" / f"latest_net_{net}{suffix}"), given[net])
    run = train(*configs(tiny_data, tmp_path, max_iters=2, lr=0.0, continue_train=True), progress=False)
    out = capsys.readouterr().out
    assert f"training from latest_net_G{suffix}" in out and "fresh optimizers" in out
    assert ("new discriminator" in out) == (nets == "G")
    G, D, state = final_state(run)
    assert state["iteration"] == 2 and state["epoch"] == 1
    for net, trained in (("G", G), ("D", D)):  # lr 0: the parameters are the given ones, if they were loaded
        same = all(torch.equal(trained[k], v) for k, v in given[net].named_parameters())
        assert same == (net in nets), net


def test_save_by_iter_and_load_iter(tiny_data, tmp_path, capsys):
    run = train(*configs(tiny_data, tmp_path, max_iters=4, save_latest_freq=2, save_by_iter=True), progress=False)
    for n in (2, 4):
        assert weights_metadata(f"{run}/iter_{n}_net_G.safetensors")["iteration"] == str(n)
        assert os.path.isfile(f"{run}/iter_{n}_net_D.safetensors")
    assert not os.path.exists(f"{run}/iter_1_net_G.safetensors")
    train(*configs(tiny_data, tmp_path, max_iters=1, continue_train=True, load_iter=2, epoch_count=3), progress=False)
    assert "training from iter_2_net_G.safetensors and iter_2_net_D.safetensors" in capsys.readouterr().out
    assert load_train_state(f"{run}/latest_train_state.pt")["epoch"] == 3


def test_serial_batches_take_the_images_in_order(tiny_data, tmp_path, monkeypatch):
    seen = []
    real = loop.make_pipeline

    class Recording:
        def __init__(self, inner):
            self.inner, self.sampler = inner, inner.sampler

        def __iter__(self):
            for batch in self.inner:
                seen.append([os.path.basename(p) for p in batch["A_paths"]])
                yield batch

    monkeypatch.setattr(loop, "make_pipeline", lambda *a, **k: Recording(real(*a, **k)))
    train(*configs(tiny_data, tmp_path / "a", max_iters=8, serial_batches=True), progress=False)
    names = sorted(os.listdir(f"{tiny_data}/train"))
    in_order = [names[i : i + 2] for i in range(0, 8, 2)]
    assert seen == in_order * 2  # both epochs, in file order
    seen.clear()
    train(*configs(tiny_data, tmp_path / "b", max_iters=4), progress=False)
    assert seen != in_order and sorted(sum(seen, [])) == names


def test_use_wandb_logs_scalars_and_samples(tiny_data, tmp_path, monkeypatch):
    logged, runs = [], []
    fake = types.ModuleType("wandb")
    fake.Image = lambda image: ("image", image.size)

    def init(**kwargs):
        runs.append(kwargs)
        return types.SimpleNamespace(
            log=lambda values, step: logged.append((step, values)), finish=lambda: runs.append("finished")
        )

    fake.init = init
    monkeypatch.setitem(sys.modules, "wandb", fake)
    train(*configs(tiny_data, tmp_path, max_iters=3, use_wandb=True, wandb_project_name="p"), progress=False)
    assert runs[0]["project"] == "p" and runs[0]["name"] == "run" and runs[-1] == "finished"
    assert runs[0]["dir"] == str(tmp_path / "run")
    assert runs[0]["config"]["model"]["netG"] == "unet_64"
    scalars = [(step, v) for step, v in logged if "train/G_L1" in v]
    assert [step for step, _ in scalars] == [1, 2, 3] and all(v["train/G_L1"] > 0 for _, v in scalars)
    assert [step for step, v in logged if "samples/A_fake_B" in v] == [1, 3]


def test_use_wandb_without_wandb_says_how_to_get_it(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    train(*configs(tiny_data, tmp_path, max_iters=1, use_wandb=True), progress=False)
    assert "pip install wandb" in capsys.readouterr().err


def test_ctrl_c_before_training_says_so(tiny_data, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt()  # as Python raises it in the middle of the cache build

    monkeypatch.setattr(loop, "make_pipeline", interrupted)
    with pytest.raises(KeyboardInterrupt, match="interrupted while preparing the run; nothing was trained"):
        train(*configs(tiny_data, tmp_path, max_iters=2), progress=False)


def test_a_second_train_on_the_same_run_is_refused(tiny_data, tmp_path):
    with (
        RunFolder(str(tmp_path), "run").locked(),
        pytest.raises(CheckpointError, match="is in use by another fastpix train"),
    ):
        train(*configs(tiny_data, tmp_path, max_iters=2), progress=False)


def test_every_file_of_a_run_gets_the_users_umask(tiny_data, tmp_path):
    old = os.umask(0o002)
    try:
        run = train(*configs(tiny_data, tmp_path, max_iters=2), progress=False)
    finally:
        os.umask(old)
    modes = {
        os.path.relpath(os.path.join(folder, name), run): os.stat(os.path.join(folder, name)).st_mode & 0o777
        for folder, _, names in os.walk(run)
        for name in names
    }
    assert len(modes) >= 8 and set(modes.values()) == {0o664}, modes


def test_continue_train_of_a_missing_run_is_refused_and_creates_nothing(tiny_data, tmp_path):
    with pytest.raises(CheckpointError, match="holds no checkpoint to resume and no latest_net_G"):
        train(*configs(tiny_data, tmp_path, max_iters=2, continue_train=True), progress=False)
    assert not os.path.exists(tmp_path / "run")
