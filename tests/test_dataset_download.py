"""`fastpix data download`: archives from a loopback mirror extracted to <root>/<name>/ safely; every refused,
damaged or oversized archive is one line and leaves neither a half data set nor a file outside the root."""

import io
import os
import shutil
import tarfile

import pytest
from loopback import Mirror, serve
from small_disk import small_disk

from fastpix import cli, download
from fastpix.config import DatasetDownloadConfig
from fastpix.data import archive
from fastpix.data.standard import download_dataset
from fastpix.errors import ConfigError, DataError, DiskFull, UnsafeArchive

GOOD = {"facades/train/1.jpg": b"one", "facades/train/2.jpg": b"two", "facades/val/3.jpg": b"three"}


def tar_gz(members: dict[str, bytes] | None = None, extra=()) -> bytes:
    """A .tar.gz of regular files (name -> bytes), then the TarInfos of `extra` (links, devices ...)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (GOOD if members is None else members).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return buffer.getvalue()


def member(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def config(root, base, **kw):
    return DatasetDownloadConfig(name=kw.pop("name", "facades"), root=str(root), mirror=base, retries=1, **kw)


def tree(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, ds, fs in os.walk(folder) for n in ds + fs)


def test_a_data_set_is_extracted_into_place_and_its_archive_removed(tmp_path):
    with serve(Mirror({"/datasets/facades.tar.gz": tar_gz()})) as base:
        result = download_dataset(config(tmp_path / "datasets", base), progress=False)
    assert result.files == 3 and result.fetched.size > 0
    assert tree(tmp_path / "datasets") == [
        "facades",
        "facades/train",
        "facades/train/1.jpg",
        "facades/train/2.jpg",
        "facades/val",
        "facades/val/3.jpg",
    ]
    assert (tmp_path / "datasets/facades/val/3.jpg").read_bytes() == b"three"


def test_an_existing_data_set_is_left_alone_unless_force(tmp_path):
    root = tmp_path / "datasets"
    (root / "facades/train").mkdir(parents=True)
    (root / "facades/train/mine.jpg").write_bytes(b"mine")
    mirror = Mirror({"/datasets/facades.tar.gz": tar_gz()})
    with serve(mirror) as base:
        assert download_dataset(config(root, base), progress=False).present
        assert mirror.requests == [] and tree(root) == ["facades", "facades/train", "facades/train/mine.jpg"]
        download_dataset(config(root, base, force=True), progress=False)
    assert tree(root / "facades") == ["train", "train/1.jpg", "train/2.jpg", "val", "val/3.jpg"]
    assert sorted(os.listdir(root)) == ["facades"]


def test_an_archive_put_there_by_hand_is_used_without_downloading(tmp_path):
    root = tmp_path / "datasets"
    root.mkdir()
    (root / "maps.tar.gz").write_bytes(tar_gz({"maps/val/1.jpg": b"x"}))
    mirror = Mirror({})
    with serve(mirror) as base:
        result = download_dataset(config(root, base, name="maps"), progress=False)
    assert result.fetched is None and mirror.requests == []
    assert tree(root) == ["maps", "maps/val", "maps/val/1.jpg"]


def test_a_truncated_archive_is_one_line_and_leaves_nothing(tmp_path):
    data = tar_gz({f"facades/train/{i}.jpg": os.urandom(20_000) for i in range(5)})
    with (
        serve(Mirror({"/datasets/facades.tar.gz": data[: len(data) // 2]})) as base,
        pytest.raises(DataError) as caught,
    ):
        download_dataset(config(tmp_path / "datasets", base), progress=False)
    message = str(caught.value)
    assert "\n" not in message and "damaged or truncated" in message
    assert f"{base}/datasets/facades.tar.gz" in message and "download it by hand to" in message
    assert tree(tmp_path / "datasets") == []


ESCAPES = {
    "parent": ([], [member("facades/../x", tarfile.REGTYPE)]),
    "dotdot-first": ([], [member("../x", tarfile.REGTYPE)]),
    "absolute": ([], [member("/etc/x", tarfile.REGTYPE)]),
    "other-folder": ([], [member("elsewhere/x", tarfile.REGTYPE)]),
    "symlink-out": ([], [member("facades/train/link", tarfile.SYMTYPE, "../../../x")]),
    "symlink-inside": ([], [member("facades/train/link", tarfile.SYMTYPE, "1.jpg")]),
    "hardlink-out": ([], [member("facades/train/hard", tarfile.LNKTYPE, "../x")]),
    "device": ([], [member("facades/train/dev", tarfile.CHRTYPE)]),
    "fifo": ([], [member("facades/train/fifo", tarfile.FIFOTYPE)]),
}


@pytest.mark.parametrize("case", list(ESCAPES))
def test_members_that_escape_or_are_not_files_refuse_the_whole_archive(tmp_path, case):
    _, extra = ESCAPES[case]
    root = tmp_path / "sandbox" / "datasets"
    with (
        serve(Mirror({"/datasets/facades.tar.gz": tar_gz(extra=extra)})) as base,
        pytest.raises(UnsafeArchive) as caught,
    ):
        download_dataset(config(root, base), progress=False)
    assert "refused, nothing extracted" in str(caught.value) and "\n" not in str(caught.value)
    assert "check --mirror" in str(caught.value)
    assert tree(tmp_path) == ["sandbox", "sandbox/datasets"]  # no half data set, nothing beside or above it


def test_no_space_to_extract_is_found_before_extracting(tmp_path, monkeypatch):
    root = str(tmp_path / "disk")
    zeros = tar_gz({f"facades/train/{i}.png": bytes(200_000) for i in range(4)})  # 800 kB in a few kB
    with small_disk(root, 256 * 1024, monkeypatch, [download, archive]):
        with serve(Mirror({"/datasets/facades.tar.gz": zeros})) as base, pytest.raises(DiskFull) as caught:
            download_dataset(config(root, base), progress=False)
        assert os.listdir(root) == ["facades.tar.gz"]  # whole, and used by the next run once there is room
    assert "no space left" in str(caught.value)


def test_a_disk_that_fills_while_extracting_leaves_no_half_data_set(tmp_path, monkeypatch):
    root = str(tmp_path / "disk")
    zeros = tar_gz({f"facades/train/{i}.png": bytes(100_000) for i in range(4)})
    with small_disk(root, 256 * 1024, monkeypatch, [download, archive]):
        usage = shutil.disk_usage
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(path)._replace(free=2**40))  # it lies
        with serve(Mirror({"/datasets/facades.tar.gz": zeros})) as base, pytest.raises(DiskFull) as caught:
            download_dataset(config(root, base), progress=False)
        assert os.listdir(root) == ["facades.tar.gz"]
    assert str(caught.value).startswith(f"{root}/facades/train/")


def test_cityscapes_says_why_and_how_in_one_line():
    with pytest.raises(ConfigError) as caught:
        download_dataset(DatasetDownloadConfig(name="cityscapes"))
    assert "licence" in str(caught.value) and "fastpix data cityscapes --gtFine" in str(caught.value)


def test_the_command_line(tmp_path, capsys):
    root = str(tmp_path / "datasets")
    with serve(Mirror({"/datasets/night2day.tar.gz": tar_gz({"night2day/test/1.jpg": b"1"})})) as base:
        assert cli.main(["data", "download", "night2day", "--root", root, "--mirror", base]) == 0
        assert capsys.readouterr().out == (
            f"fastpix data download: 1 files in {root}/night2day: ~20k pairs, "
            "A = night, B = day (day -> night: --direction BtoA)\n"
        )
        assert cli.main(["data", "download", "maps", "--root", root, "--mirror", base, "--retries", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{base}/datasets/maps.tar.gz: not found (HTTP 404)" in err
