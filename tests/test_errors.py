"""Errors a user can cause reach them as one line `fastpix <cmd>: ...` with a non-zero status; --debug (or
FASTPIX_DEBUG=1) shows the traceback instead, and a programming error always shows it."""

import ast
import errno
import os
import pathlib

import pytest
import torch

from fastpix import cli
from fastpix.cli import info, training
from fastpix.config import user_cache_dir
from fastpix.data.cache import PairCache, default_cache_dir
from fastpix.data.dataset import PairedDataset
from fastpix.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DecodeError,
    DiskFull,
    ImageTooLarge,
    MissingDependency,
    ResourceError,
    UserError,
)
from fastpix.models import define_G
from fastpix.train.distributed import check_world


def raising(exc):
    def command(args):
        raise exc

    return command


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize(
    "exc, line, code",
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/runs/x/latest_net_G.safetensors"),
            "fastpix info: error: No space left on device: /runs/x/latest_net_G.safetensors",
            1,
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/data/train"),
            "fastpix info: error: Permission denied: /data/train",
            1,
        ),
        (
            ModuleNotFoundError("No module named 'tensorboard'", name="tensorboard"),
            "fastpix info: error: this needs the optional package tensorboard (pip install it)",
            1,
        ),
        (
            ConfigError("--netG unet_48: the U-Net size must be a power of two"),
            "fastpix info: error: --netG unet_48: the U-Net size must be a power of two",
            2,
        ),
        (KeyboardInterrupt(), "fastpix info: interrupted", 130),  # e.g. during the cache build: not an empty message
        (
            MemoryError("a cache of 9.0 GiB fits neither on the device, in RAM nor in /c: stream instead"),
            "fastpix info: error: a cache of 9.0 GiB fits neither on the device, in RAM nor in /c: stream instead",
            1,
        ),
    ],
)
def test_user_errors_are_one_line(exc, line, code, monkeypatch, capsys):
    monkeypatch.setattr(info, "cmd_info", raising(exc))
    assert cli.main(["info"]) == code
    assert one_line(capsys) == line


def test_debug_shows_the_traceback_and_programming_errors_always_do(monkeypatch):
    monkeypatch.setattr(info, "cmd_info", raising(ConfigError("--ngf must be positive")))
    for argv in (["--debug", "info"], ["info", "--debug"]):
        with pytest.raises(ConfigError, match="--ngf"):
            cli.main(argv)
    monkeypatch.setenv("FASTPIX_DEBUG", "1")
    with pytest.raises(ConfigError, match="--ngf"):
        cli.main(["info"])
    monkeypatch.delenv("FASTPIX_DEBUG")
    for bug in ("a bug's message, naming no flag", "--ngf: a ValueError is a bug, whatever its message names"):
        monkeypatch.setattr(info, "cmd_info", raising(ValueError(bug)))
        with pytest.raises(ValueError, match=bug[:5]):
            cli.main(["info"])
    monkeypatch.setattr(info, "cmd_info", raising(AttributeError("'NoneType' object has no attribute 'x'")))
    with pytest.raises(AttributeError):
        cli.main(["info"])


def test_real_user_errors(workdir, capsys):
    # a path through a file
    assert cli.main(["data", "demo", "--out", os.devnull + "/demo"]) == 1
    assert one_line(capsys) == f"fastpix data: error: Not a directory: {os.devnull}/demo"
    # a ValueError of the model factory, naming the flag: compile is a training backend only
    os.makedirs(workdir / "checkpoints" / "g")
    torch.save(
        define_G(3, 3, 4, "unet_32", "batch", True).state_dict(), workdir / "checkpoints" / "g" / "latest_net_G.pth"
    )
    assert (
        cli.main(
            [
                "test",
                "--dataroot",
                str(workdir),
                "--name",
                "g",
                "--netG",
                "unet_32",
                "--ngf",
                "4",
                "--backend",
                "compile",
            ]
        )
        == 2
    )
    assert "--backend 'compile' is not one of eager, triton" in one_line(capsys)


def test_a_crop_the_unet_cannot_take_is_refused_before_any_work(tiny_data, workdir, capsys):
    argv = ["train", "--dataroot", tiny_data, "--netG", "unet_32", "--load_size", "44", "--crop_size", "40", "--quiet"]
    assert cli.main(argv) == 2
    assert one_line(capsys) == (
        "fastpix train: error: --netG unet_32 takes images whose sides are multiples of 32: "
        "--crop_size 40 is not (or use a smaller U-Net)"
    )
    assert not os.path.exists(workdir / "checkpoints")


def test_indivisible_batch_is_refused_before_any_work(tiny_data, workdir, monkeypatch, capsys):
    """--batch_size is the global batch: under --nproc or torchrun it must split evenly, said once, before the
    cache is built or torchrun is started."""
    with pytest.raises(
        ConfigError,
        match=r"--batch_size 3 is the global batch, split over 2 processes: it must be "
        r"a multiple of 2 \(e.g. 2 or 4\)",
    ):
        check_world(3, 2)
    check_world(4, 2)
    with pytest.raises(ConfigError, match="--norm syncbatch needs several GPU processes"):
        check_world(4, 1, "syncbatch")
    argv = ["train", "--dataroot", tiny_data, "--batch_size", "3", "--quiet"]
    assert cli.main([*argv, "--nproc", "2"]) == 2
    assert "multiple of 2" in one_line(capsys)
    monkeypatch.setenv("WORLD_SIZE", "4")  # as torchrun sets it, on each rank
    monkeypatch.setenv("RANK", "0")
    assert cli.main(argv) == 2
    assert "split over 4 processes" in one_line(capsys)
    monkeypatch.setenv("RANK", "3")  # the other ranks stop silently: the line appears once
    monkeypatch.setattr(training, "RANK_EXIT_DELAY_S", 0.0)
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2 and capsys.readouterr().err == ""
    assert not os.path.exists(workdir / "checkpoints")


def test_default_cache_is_in_the_users_cache_directory(pristine, tmp_path, monkeypatch):
    """Keyed by the data set's path (a folder each) and content (the build's name); never in the data set."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == str(tmp_path / "xdg" / "fastpix")
    import shutil

    first, second = (shutil.copytree(pristine, str(tmp_path / name / "facades")) for name in ("a", "b"))
    before = sorted(os.listdir(first))
    dataset = PairedDataset(first, "train", load_size=36, crop_size=32)
    cache = PairCache(dataset, progress=False)
    folder = default_cache_dir(dataset)
    assert os.path.dirname(folder) == str(tmp_path / "xdg" / "fastpix" / "pairs")
    assert os.path.basename(folder).startswith("facades-") and cache.stem.startswith(folder)
    assert os.path.isfile(cache.stem + ".json") and sorted(os.listdir(first)) == before
    assert default_cache_dir(PairedDataset(second, "train", load_size=36, crop_size=32)) != folder
    assert PairCache(PairedDataset(first, "train", load_size=36, crop_size=32), progress=False).hit
    explicit = PairCache(dataset, cache_dir=str(tmp_path / "mine"), progress=False)  # --cache_dir still decides
    assert explicit.stem.startswith(str(tmp_path / "mine")) and not explicit.hit
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert user_cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "fastpix")


def messages_in_system_exits(source: str) -> list[int]:
    """Lines of `source` raising SystemExit with a message (a string in its argument): the CLI's one-line errors
    are UserErrors, and SystemExit only carries an exit status."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "SystemExit" and node.args):
            continue
        if any(
            isinstance(n, ast.JoinedStr) or (isinstance(n, ast.Constant) and isinstance(n.value, str))
            for n in ast.walk(node.args[0])
        ):
            found.append(node.lineno)
    return found


def test_no_system_exit_carries_a_message():
    root = pathlib.Path(__file__).resolve().parents[1] / "fastpix"
    found = {
        str(p.relative_to(root)): lines
        for p in sorted(root.rglob("*.py"))
        if (lines := messages_in_system_exits(p.read_text()))
    }
    assert found == {}
    snippet = 'raise SystemExit(2)\nraise SystemExit(code)\nraise SystemExit("no")\nraise SystemExit(f"{x}: no")\n'
    assert messages_in_system_exits(snippet) == [3, 4]


def test_every_kind_of_user_error_reaches_the_cli_as_one_line(monkeypatch, capsys):
    def kinds(cls):
        return {cls}.union(*(kinds(sub) for sub in cls.__subclasses__()))

    found = kinds(UserError)
    assert {
        ConfigError,
        DataError,
        DecodeError,
        ImageTooLarge,
        CheckpointError,
        ResourceError,
        DiskFull,
        MissingDependency,
    } <= found
    for kind in found:
        exc = kind("wandb", None, "--use_wandb") if kind is MissingDependency else kind(f"{kind.__name__}: the fix")
        monkeypatch.setattr(info, "cmd_info", raising(exc))
        assert cli.main(["info"]) == kind.exit_status, kind
        assert one_line(capsys) == f"fastpix info: error: {exc}", kind


@pytest.mark.parametrize(
    "argv, line",
    [
        (
            ["export", "--out", "x"],
            "fastpix export: error: give --name (a run under --checkpoints_dir) or --checkpoint "
            "(a run folder or a weights file)",
        ),
        (
            ["eval", "--checkpoint", "missing.pth"],
            "fastpix eval: error: missing.pth: no such run folder or weights file (--checkpoint)",
        ),
        (
            ["test", "--name", "none"],
            "fastpix test: error: ./checkpoints/none: no latest_net_G.safetensors or "
            "latest_net_G.pth (is --name / --checkpoints_dir / --epoch right?)",
        ),
        (
            ["study", "report", "s"],
            "fastpix study: error: s: no study.json (make the study first: fastpix study make --results DIR --out s)",
        ),
    ],
)
def test_user_errors_below_the_cli_are_typed(argv, line, workdir, capsys):
    assert cli.main(argv) == 2
    assert one_line(capsys) == line


def test_flag_errors_found_while_training_are_one_line(tiny_data, workdir, capsys):
    base = [
        "train",
        "--dataroot",
        tiny_data,
        "--max_iters",
        "1",
        "--quiet",
        "--netG",
        "unet_32",
        "--load_size",
        "32",
        "--crop_size",
        "32",
        "--num_threads",
        "0",
    ]
    assert cli.main([*base, "--cuda_graphs", "--device", "cpu"]) == 2
    assert one_line(capsys) == "fastpix train: error: --cuda_graphs needs a CUDA device"
    assert cli.main([*base, "--preprocess", "crop", "--data_pipeline", "cache", "--name", "b"]) == 2
    assert one_line(capsys) == (
        "fastpix train: error: --preprocess crop cannot be cached or streamed (only "
        "resize_and_crop can): use --data_pipeline loader"
    )
