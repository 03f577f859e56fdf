"""fastpix.download against a loopback server: resume with Range after a cut, restart where ranges are ignored, final
HTTP errors, announced lengths, a full disk; and nothing half-written left behind by any failure."""

import os

import pytest
from loopback import Mirror, serve
from small_disk import small_disk

from fastpix import download
from fastpix.download import fetch, mirror_base
from fastpix.errors import ConfigError, DiskFull, NetworkError

DATA = os.urandom(300_000)
BY_HAND = "download it by hand to HERE"


def fetch_quick(url, target, **kw):
    return fetch(
        url, target, BY_HAND, retries=kw.pop("retries", 2), read_timeout_s=5, progress=False, backoff_s=0.0, **kw
    )


def test_a_connection_cut_half_way_resumes_with_a_range_request(tmp_path):
    mirror = Mirror({"/f.bin": DATA}, cut_after=len(DATA) // 2)
    with serve(mirror) as base:
        fetched = fetch_quick(f"{base}/f.bin", str(tmp_path / "f.bin"))
    assert (tmp_path / "f.bin").read_bytes() == DATA
    assert (fetched.size, fetched.resumed, fetched.restarted) == (len(DATA), 1, 0)
    assert mirror.requests == [("/f.bin", None), ("/f.bin", f"bytes={len(DATA) // 2}-")]
    assert os.listdir(tmp_path) == ["f.bin"]


def test_a_server_without_ranges_restarts_from_zero(tmp_path):
    mirror = Mirror({"/f.bin": DATA}, cut_after=len(DATA) // 3, ranges=False)
    with serve(mirror) as base:
        fetched = fetch_quick(f"{base}/f.bin", str(tmp_path / "f.bin"))
    assert (tmp_path / "f.bin").read_bytes() == DATA
    assert (fetched.resumed, fetched.restarted) == (0, 1)
    assert len(mirror.requests) == 2


def test_404_is_one_final_line_naming_the_url_and_leaves_nothing(tmp_path):
    mirror = Mirror({})
    with serve(mirror) as base, pytest.raises(NetworkError) as caught:
        fetch_quick(f"{base}/missing.tar.gz", str(tmp_path / "missing.tar.gz"))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{base}/missing.tar.gz: not found (HTTP 404)")
    assert message.endswith(BY_HAND)
    assert len(mirror.requests) == 1  # not retried
    assert os.listdir(tmp_path) == []


def test_a_body_shorter_than_its_content_length_is_refused_after_the_retries(tmp_path):
    mirror = Mirror({"/f.bin": DATA}, short_by=10)
    with serve(mirror) as base, pytest.raises(NetworkError) as caught:
        fetch_quick(f"{base}/f.bin", str(tmp_path / "f.bin"), retries=2)
    assert f"after {len(DATA):,} of {len(DATA) + 10:,} bytes" in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_an_unreachable_server_fails_after_its_retries(tmp_path):
    with serve(Mirror({})) as base:
        pass  # the port is free again: nothing listens there
    with pytest.raises(NetworkError) as caught:
        fetch_quick(f"{base}/f.bin", str(tmp_path / "f.bin"), retries=1)
    assert "2 tries without progress" in str(caught.value) and str(caught.value).endswith(BY_HAND)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("length", [True, False], ids=["checked-before", "found-while-writing"])
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, length):
    folder = str(tmp_path / "disk")
    mirror = Mirror({"/f.bin": DATA}, length=length)
    with small_disk(folder, 128 * 1024, monkeypatch, [download]), serve(mirror) as base:
        with pytest.raises(DiskFull) as caught:
            fetch_quick(f"{base}/f.bin", os.path.join(folder, "f.bin"))
        assert os.listdir(folder) == []
    assert os.path.join(folder, "f.bin") in str(caught.value) and "no space left" in str(caught.value)


def test_the_mirror_comes_from_the_flag_then_the_environment(monkeypatch):
    monkeypatch.delenv("FASTPIX_MIRROR", raising=False)
    assert mirror_base(None) == "http://efrosgans.eecs.berkeley.edu/pix2pix"
    monkeypatch.setenv("FASTPIX_MIRROR", "https://example.invalid/p2p/")
    assert mirror_base(None) == "https://example.invalid/p2p"
    assert mirror_base("http://127.0.0.1:1") == "http://127.0.0.1:1"
    with pytest.raises(ConfigError, match="--mirror"):
        mirror_base("ftp://x")


def test_progress_without_a_terminal_is_plain_lines(monkeypatch):
    import io

    from fastpix import progress

    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    stream = io.StringIO()
    with progress.Progress("facades.tar.gz", 3 * 2**20, "B", stream=stream) as bar:
        bar.update(2**20)
        bar.update(2**20)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 3  # two updates and the final count
    assert lines[0].startswith("facades.tar.gz: 1.0 MiB of 3.0 MiB (33%), ")
    assert lines[-1].startswith("facades.tar.gz: 2.0 MiB of 3.0 MiB (67%), ")
