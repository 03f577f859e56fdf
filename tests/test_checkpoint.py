"""The store (fastpix/store/): sets committed by a manifest, recovery, full disks, the lock, file modes and one-line
errors for damaged or foreign files."""

import argparse
import errno
import fcntl
import io
import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

from fastpix import files
from fastpix.errors import CheckpointError, DiskFull
from fastpix.files import TMP_PREFIX, atomic_write_json
from fastpix.store import checkpoint_set
from fastpix.store.checkpoint_set import MANIFEST, read_manifest, recover, verify_set
from fastpix.store.generator import load_generator
from fastpix.store.run_config import saved_config
from fastpix.store.run_folder import TRAIN_STATE, RunFolder, find_weights
from fastpix.store.weights import load_train_state, load_weights, save_weights, torch_bytes, weights_bytes


def written(data) -> bytes:
    """What files._write_into(path, data) writes: data, or what data writes into a file when it is a function (a
    checkpoint's files are streamed)."""
    if not callable(data):
        return data
    buffer = io.BytesIO()
    data(buffer)
    return buffer.getvalue()


def write_set(run_dir, iteration, value):
    weights = weights_bytes({"w": torch.full((4,), float(value))}, {"iteration": iteration})
    files = {"latest_net_G.safetensors": weights, TRAIN_STATE: torch_bytes({"iteration": iteration})}
    checkpoint_set.write_set(str(run_dir), files, {"iteration": iteration, "epoch": 1, "position": 0})


def g_value(run_dir):
    return float(load_weights(f"{run_dir}/latest_net_G.safetensors")["w"][0])


class Killed(BaseException):
    """Stands for a kill: no handler of the code under test catches it."""


def test_a_save_cut_before_its_commit_leaves_the_previous_set(tmp_path, monkeypatch):
    write_set(tmp_path, 1, 1.0)
    real = files._write_into
    monkeypatch.setattr(
        files,
        "_write_into",
        lambda path, data: (_ for _ in ()).throw(Killed()) if path.endswith(TRAIN_STATE) else real(path, data),
    )
    with pytest.raises(Killed):
        write_set(tmp_path, 2, 2.0)
    assert read_manifest(str(tmp_path))["iteration"] == 1 and g_value(tmp_path) == 1.0
    verify_set(str(tmp_path), read_manifest(str(tmp_path)))


def test_a_save_cut_among_its_renames_is_finished_by_recover(tmp_path, monkeypatch):
    write_set(tmp_path, 1, 1.0)
    real = os.replace

    def one_rename_then_killed(src, dst):
        if dst.endswith(TRAIN_STATE):
            raise Killed()
        real(src, dst)

    monkeypatch.setattr(os, "replace", one_rename_then_killed)
    with pytest.raises(Killed):
        write_set(tmp_path, 2, 2.0)
    monkeypatch.setattr(os, "replace", real)
    assert torch.load(tmp_path / TRAIN_STATE)["iteration"] == 1  # torn: G is new, the state old
    open(tmp_path / ".tmp-ab12-config.json", "w").close()  # a stale temporary of some other write
    recover(str(tmp_path))
    assert torch.load(tmp_path / TRAIN_STATE)["iteration"] == 2 and g_value(tmp_path) == 2.0
    verify_set(str(tmp_path), read_manifest(str(tmp_path)))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_a_kill_inside_a_second_save_of_the_same_iteration_keeps_the_committed_set(tmp_path, monkeypatch):
    """Two saves at one iteration (an epoch ending on a --save_latest_freq multiple): the second, killed halfway
    through a file, must not leave anything that recovery puts in place of the first's files."""
    write_set(tmp_path, 4, 1.0)
    real = files._write_into

    def half_then_killed(path, data):
        data = written(data)
        real(path, data[: len(data) // 2])
        raise Killed()

    monkeypatch.setattr(files, "_write_into", half_then_killed)
    with pytest.raises(Killed):
        write_set(tmp_path, 4, 2.0)
    monkeypatch.undo()
    recover(str(tmp_path))
    assert g_value(tmp_path) == 1.0 and read_manifest(str(tmp_path))["iteration"] == 4
    verify_set(str(tmp_path), read_manifest(str(tmp_path)))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(TMP_PREFIX)]


def test_recovery_renames_only_a_temporary_whose_hash_is_the_manifests(tmp_path, monkeypatch):
    write_set(tmp_path, 1, 1.0)
    kill_at_the_renames(monkeypatch)
    with pytest.raises(Killed):
        write_set(tmp_path, 2, 2.0)
    monkeypatch.undo()
    old = (tmp_path / "latest_net_G.safetensors").read_bytes()
    tmp = tmp_path / read_manifest(str(tmp_path))["files"]["latest_net_G.safetensors"]["tmp"]
    damaged = bytearray(tmp.read_bytes())
    damaged[-1] ^= 1
    tmp.write_bytes(bytes(damaged))  # same size, other contents: not what the manifest committed
    recover(str(tmp_path))
    assert (tmp_path / "latest_net_G.safetensors").read_bytes() == old
    assert torch.load(tmp_path / TRAIN_STATE)["iteration"] == 2  # the whole temporary was renamed
    with pytest.raises(CheckpointError, match="latest_net_G.safetensors: its contents differ"):
        verify_set(str(tmp_path), read_manifest(str(tmp_path)))  # so a resume refuses the torn set, in one line
    assert not [n for n in os.listdir(tmp_path) if n.startswith(TMP_PREFIX)]


def test_a_file_changed_after_its_save_is_refused(tmp_path):
    write_set(tmp_path, 1, 1.0)
    save_weights(str(tmp_path / "latest_net_G.safetensors"), {"w": torch.zeros(4)}, {"iteration": 1})
    with pytest.raises(CheckpointError, match="latest_net_G.safetensors: its contents differ"):
        verify_set(str(tmp_path), read_manifest(str(tmp_path)))


def test_a_manifest_of_sha256_hashes_written_before_xxh3_is_still_verified(tmp_path):
    """Run folders saved by fastpix before the manifest's hash became xxh3-128 record sha256: they still resume,
    a changed file is still found, and an entry with no hash fastpix knows verifies nothing."""
    import hashlib

    write_set(tmp_path, 1, 1.0)
    manifest = read_manifest(str(tmp_path))
    assert all(set(entry) == {"tmp", "bytes", "xxh3_128"} for entry in manifest["files"].values())
    for name, entry in manifest["files"].items():
        del entry["xxh3_128"]
        entry["sha256"] = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
    atomic_write_json(str(tmp_path / MANIFEST), manifest)
    verify_set(str(tmp_path), read_manifest(str(tmp_path)))
    save_weights(str(tmp_path / "latest_net_G.safetensors"), {"w": torch.zeros(4)}, {"iteration": 1})
    with pytest.raises(CheckpointError, match="latest_net_G.safetensors: its contents differ"):
        verify_set(str(tmp_path), read_manifest(str(tmp_path)))
    manifest["files"][TRAIN_STATE] = {"tmp": "x", "bytes": 1, "md5": "0"}
    manifest["files"].pop("latest_net_G.safetensors")
    atomic_write_json(str(tmp_path / MANIFEST), manifest)
    with pytest.raises(CheckpointError, match=f"{TRAIN_STATE}: its contents differ"):
        verify_set(str(tmp_path), read_manifest(str(tmp_path)))


def test_disk_full_is_one_line_and_keeps_the_previous_set(tmp_path, monkeypatch):
    write_set(tmp_path, 1, 1.0)

    def no_space(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_write_into", no_space)
    with pytest.raises(
        DiskFull,
        match=r"-latest_net_G.safetensors: no space left on the device \(the write needs "
        r"[\d,]+ bytes",
    ) as info:
        write_set(tmp_path, 2, 2.0)
    assert "\n" not in str(info.value) and "previous checkpoint" in str(info.value)
    monkeypatch.undo()
    assert read_manifest(str(tmp_path))["iteration"] == 1 and g_value(tmp_path) == 1.0
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    # where the free space already tells, nothing is written at all
    monkeypatch.setattr(checkpoint_set.shutil, "disk_usage", lambda p: argparse.Namespace(free=10, total=10, used=0))
    with pytest.raises(DiskFull, match="needs [\\d,]+ bytes, 10 are free"):
        write_set(tmp_path, 3, 3.0)


def test_files_get_the_users_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_set(tmp_path, 1, 1.0)
        atomic_write_json(str(tmp_path / "config.json"), {})
    finally:
        os.umask(old)
    for name in ("latest_net_G.safetensors", TRAIN_STATE, MANIFEST, "config.json"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o640, name


def test_a_second_process_is_refused_and_a_killed_ones_lock_does_not_block(tmp_path):
    run = RunFolder(str(tmp_path), "run")
    with (
        run.locked(),
        pytest.raises(CheckpointError, match=f"run is in use by another fastpix train \\(pid {os.getpid()}"),
        RunFolder(str(tmp_path), "run").locked(),
    ):
        pass
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time\n"
                f"fd = os.open({run.path('.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout.readline() == b"held\n"
    with pytest.raises(CheckpointError, match="in use"), run.locked():
        pass
    holder.kill()
    holder.wait()
    with run.locked():  # the kernel released the dead process's lock
        pass


def test_damaged_or_foreign_files_give_one_line_naming_them(tmp_path):
    (tmp_path / "config.json").write_text('{"model": {"netG": ')
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        saved_config(str(tmp_path))
    (tmp_path / "config.json").write_text('["model"]')
    with pytest.raises(CheckpointError, match="config.json: not a fastpix run configuration"):
        saved_config(str(tmp_path))
    torch.save({"weights": [1, 2]}, tmp_path / TRAIN_STATE)
    with pytest.raises(CheckpointError, match="not a fastpix train state \\(no epoch, position, iteration"):
        load_train_state(str(tmp_path / TRAIN_STATE))
    torch.save(argparse.Namespace(a=1), tmp_path / "g.pth")  # a pickle of an object: never unpickled
    with pytest.raises(CheckpointError) as info:
        load_weights(str(tmp_path / "g.pth"))
    message = str(info.value)
    assert message.startswith(f"{tmp_path}/g.pth: cannot read checkpoint") and "\n" not in message
    assert "weights_only=False" not in message and "pickled Python objects" in message
    (tmp_path / "checkpoint.json").write_text(json.dumps({"files": 3}))
    with pytest.raises(CheckpointError, match="checkpoint.json: not a fastpix checkpoint manifest"):
        read_manifest(str(tmp_path))


def kill_at_the_renames(monkeypatch):
    """A kill just after a save's commit: none of its temporaries is renamed into place."""
    real = os.replace

    def killed(src, dst):
        if os.path.basename(src).startswith(TMP_PREFIX) and not dst.endswith(MANIFEST):
            raise Killed()
        real(src, dst)

    monkeypatch.setattr(os, "replace", killed)


def save_generator(run_dir, iteration, G):
    checkpoint_set.write_set(
        str(run_dir),
        {
            "latest_net_G.safetensors": weights_bytes(G, {"iteration": iteration}),
            TRAIN_STATE: torch_bytes({"iteration": iteration}),
        },
        {"iteration": iteration, "epoch": 1, "position": 0},
    )


@pytest.mark.parametrize("first_save", [False, True])
def test_readers_see_the_committed_save_before_its_renames_are_finished(tmp_path, monkeypatch, first_save):
    """test/predict/eval (load_generator, find_weights, load_weights) read what the manifest committed, from its
    temporaries, without renaming anything (a train may hold the folder); a temporary whose hash differs is not
    read. Also when the killed save was the run's first: no file under the final names yet."""
    from fastpix.models import define_G

    arch = {"netG": "unet_32", "ngf": 4, "norm": "batch", "input_nc": 3, "output_nc": 3}
    old, new = (define_G(3, 3, 4, "unet_32", "batch", True, backend="eager") for _ in range(2))
    if not first_save:
        save_generator(tmp_path, 1, old)
    kill_at_the_renames(monkeypatch)
    with pytest.raises(Killed):
        save_generator(tmp_path, 2, new)
    monkeypatch.undo()
    before = sorted(os.listdir(tmp_path))
    with RunFolder(str(tmp_path.parent), tmp_path.name).locked():  # as if a train held it: readers still read
        path = find_weights(str(tmp_path), "latest", "G")
        G = load_generator(str(tmp_path), **arch)
    assert path == str(tmp_path / "latest_net_G.safetensors")
    for k, v in new.state_dict().items():
        assert torch.equal(G.state_dict()[k], v), k
    after = sorted(n for n in os.listdir(tmp_path) if n != ".lock")
    committed = read_manifest(str(tmp_path))["files"]["latest_net_G.safetensors"]["tmp"]
    assert after == before and committed in before  # nothing renamed
    tmp = tmp_path / committed
    data = bytearray(tmp.read_bytes())
    data[-1] ^= 1
    tmp.write_bytes(bytes(data))  # not the committed file any more: never read
    if first_save:
        with pytest.raises(CheckpointError, match="latest_net_G.safetensors: no such checkpoint file"):
            load_weights(path)
    else:
        assert all(torch.equal(load_weights(path)[k], v) for k, v in old.state_dict().items())


def test_the_train_state_is_written_without_zip_crcs_and_reads_back_equal(tmp_path):
    """The background writer's torch.save leaves out the zip records' CRC-32 (the manifest hashes the file), turning
    torch's process-wide switch off only around its own call."""
    import zipfile

    from fastpix.store.weights import train_state_stream

    state = {"iteration": 3, "optimizers": {"m": torch.arange(1000.0)}, "torch_rng": torch.get_rng_state()}
    with open(tmp_path / "state.pt", "wb") as f:
        train_state_stream(state).write(f)
    assert torch.serialization.get_crc32_options()  # restored for everyone else's torch.save
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    assert loaded["iteration"] == 3 and torch.equal(loaded["optimizers"]["m"], state["optimizers"]["m"])
    with zipfile.ZipFile(tmp_path / "state.pt") as archive:
        assert {info.CRC for info in archive.infolist()} == {0}


def takes_o_direct(folder) -> bool:
    """Whether the file system of folder takes an aligned O_DIRECT write (ext4, xfs: yes; older tmpfs: no)."""
    path = os.path.join(folder, "probe")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
        try:
            block = mmap.mmap(-1, files.DIRECT_BLOCK)
            os.write(fd, block)
        finally:
            os.close(fd)
            os.remove(path)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("where", ["tmp_path", "shm", "refused"])
def test_an_unbuffered_file_writes_exactly_the_pieces_given(tmp_path, monkeypatch, where):
    """files.UnbufferedFile (a checkpoint member's writes, around the page cache): pieces of odd sizes, across its
    staging buffer and ending in a partial block, land byte for byte — with O_DIRECT where the file system takes
    it, through the page cache on tmpfs or where a direct write is refused (EINVAL)."""
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this system: UnbufferedFile writes through the page cache only")
    folder = tempfile.mkdtemp(dir="/dev/shm") if where == "shm" else str(tmp_path)
    real_write, modes = os.write, []

    def write(fd, data):
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        if direct and where == "refused":
            raise OSError(errno.EINVAL, "Invalid argument")
        modes.append(direct)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    rng = torch.Generator().manual_seed(0)
    sizes = (5, 4091, 3 << 20, files.DIRECT_STAGING + 7, 1)
    pieces = [torch.randint(0, 256, (n,), dtype=torch.uint8, generator=rng).numpy() for n in sizes]
    try:
        path = os.path.join(folder, "member.bin")
        files.write_new(path, lambda f: [f.write(p) for p in pieces])
        with open(path, "rb") as f:
            assert f.read() == b"".join(p.tobytes() for p in pieces)
        monkeypatch.setattr(os, "write", real_write)
        if where == "tmp_path" and takes_o_direct(folder):
            assert modes[:-1] == [True] * (len(modes) - 1) and modes[-1] is False  # the last partial block buffered
        if where == "refused":
            assert not any(modes)
    finally:
        if where == "shm":
            shutil.rmtree(folder)
