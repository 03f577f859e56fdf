"""Fetching one file over HTTP: resumed after a dropped connection, retried with backoff, checked against its
announced length, and never left half-written under the name a reader looks for.

The standard library's urllib does it: one GET streamed to a temporary file beside the target, renamed over the
target only when every announced byte has arrived. A connection that breaks off is resumed with a Range request
from the bytes already written (the server answers 206); a server that ignores ranges answers 200 with the whole
file, which then restarts from zero. An attempt that made progress is resumed at once; failures without progress are
retried `retries` times, waiting DOWNLOAD_BACKOFF_S, then twice that and so on. HTTP errors other than 408, 429 and
5xx are final at once. Every failure is one line naming the URL, with where to put the file when fetched by hand.

Imports only the standard library and the bottom of fastpix (config, errors, files, progress): the data sets
(fastpix.data) and the pretrained models both download through it.
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from fastpix.config import DOWNLOAD_BACKOFF_MAX_S, DOWNLOAD_BACKOFF_S, MIRROR_ENV, PIX2PIX_MIRROR
from fastpix.errors import ConfigError, NetworkError, UserError
from fastpix.files import TMP_PREFIX, disk_full, fsync_folder, is_disk_full, temporary_path
from fastpix.progress import Progress

CHUNK = 1 << 20
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
USER_AGENT = "fastpix-download (urllib)"
# The network's errors while connecting or reading (a refused or reset connection, a timeout, TLS, a response cut
# inside its framing): OSErrors and http.client's own. Writes are outside these try blocks, so a disk error is
# never taken for one.
NETWORK_ERRORS = (OSError, http.client.HTTPException)


def _lock(path: str, error: type[UserError], what: str) -> int:
    """An open descriptor holding flock on path. The holder removes the file when done, so a lock taken on a file
    that was removed meanwhile is taken again on the new one."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise error(
                f"{what} is being downloaded by another fastpix (pid {holder}): wait for it to finish"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)


@contextlib.contextmanager
def exclusive(folder: str, name: str, error: type[UserError]):
    """One download of <folder>/<name> at a time (a flock on <folder>/.<name>.lock, released by the kernel however
    its holder exits; a second process gets `error` naming the holder's pid); inside it, the temporaries that a
    killed download of <name> left (.tmp-*-<name>...) are removed first."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f".{name}.lock")
    fd = _lock(path, error, os.path.join(folder, name))
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        for left in glob.glob(os.path.join(glob.escape(folder), f"{TMP_PREFIX}*-{glob.escape(name)}*")):
            if os.path.isdir(left) and not os.path.islink(left):
                shutil.rmtree(left)
            else:
                os.remove(left)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        os.close(fd)


def mirror_base(mirror: str | None) -> str:
    """--mirror, else $FASTPIX_MIRROR, else the reference's server; without a trailing slash."""
    base = mirror or os.environ.get(MIRROR_ENV) or PIX2PIX_MIRROR
    if not base.startswith(("http://", "https://")):
        source = "--mirror" if mirror else f"${MIRROR_ENV}"
        raise ConfigError(
            f"{source} {base!r}: give an http:// or https:// address (a server laid out as {PIX2PIX_MIRROR})"
        )
    return base.rstrip("/")


@dataclass
class Fetched:
    url: str
    path: str
    size: int
    resumed: int = 0  # transfers continued with a Range request
    restarted: int = 0  # transfers begun again from zero (the server ignored the Range request)


class _BrokenOff(Exception):
    """A transfer that stopped before its end; the message says how."""


def _open(url: str, offset: int, timeout_s: float):
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)


def _content_range(response) -> tuple[int, int | None] | None:
    """(first byte, total or None) of a 206 answer's Content-Range; None when absent or unreadable."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", response.headers.get("Content-Range", ""))
    if not match:
        return None
    return int(match[1]), None if match[2] == "*" else int(match[2])


def _length(response) -> int | None:
    text = response.headers.get("Content-Length")
    return int(text) if text and text.strip().isdigit() else None


class _Transfer:
    """One file's bytes arriving in `out` across attempts: where it stands and what each answer means."""

    def __init__(self, url, out, target, by_hand, bar):
        self.url, self.out, self.target, self.by_hand, self.bar = url, out, target, by_hand, bar
        self.offset, self.total, self.ranges = 0, None, True
        self.resumed = self.restarted = 0

    def _from_zero(self, total):
        self.out.seek(0)
        self.out.truncate()
        if self.offset:
            self.restarted += 1
        self.offset, self.total = 0, total
        self.bar.total = total
        self.bar.reset()

    def begin(self, response):
        """Place the answer's body: after what is written (206 for our offset), or from zero (200)."""
        status = getattr(response, "status", 200)
        if self.offset and status == 206:
            found = _content_range(response)
            if (
                found is None
                or found[0] != self.offset
                or (found[1] is not None and self.total is not None and found[1] != self.total)
            ):
                self.ranges = False  # a range other than asked, or the file changed: start over, without Range
                raise _BrokenOff(
                    f"the server answered bytes {response.headers.get('Content-Range')} for a request "
                    f"from byte {self.offset}"
                )
            self.resumed += 1
            return
        length = _length(response)
        self._from_zero(length)
        self._check_space(length)

    def _check_space(self, length):
        if length is None:
            return
        folder = os.path.dirname(os.path.abspath(self.target))
        if shutil.disk_usage(folder).free < length:
            raise disk_full(self.target, length, "; free some space there and run again")

    def copy(self, response):
        """The body into out; _BrokenOff when the connection fails or closes before the announced end."""
        while True:
            try:
                chunk = response.read(CHUNK)
            except NETWORK_ERRORS as exc:
                raise _BrokenOff(_reason(exc)) from exc
            if not chunk:
                break
            try:
                self.out.write(chunk)
            except OSError as exc:
                if is_disk_full(exc):
                    raise disk_full(
                        self.target, self.total or self.offset + len(chunk), "; free some space there and run again"
                    ) from exc
                raise
            self.offset += len(chunk)
            self.bar.update(len(chunk))
        if self.total is not None and self.offset != self.total:
            raise _BrokenOff(f"the connection closed after {self.offset:,} of {self.total:,} bytes")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _attempt(transfer: _Transfer, timeout_s: float):
    offset = transfer.offset if transfer.ranges else 0
    try:
        response = _open(transfer.url, offset, timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and transfer.offset:  # a range the server cannot serve: start over without one
            transfer.ranges = False
            raise _BrokenOff(f"HTTP 416 for a request from byte {transfer.offset}") from exc
        if exc.code in RETRY_STATUS:
            raise _BrokenOff(f"HTTP {exc.code} {exc.reason}") from exc
        what = "not found" if exc.code in (404, 410) else f"refused ({exc.reason})"
        raise NetworkError(
            f"{transfer.url}: {what} (HTTP {exc.code}); check the name and --mirror, or {transfer.by_hand}"
        ) from exc
    except NETWORK_ERRORS as exc:
        raise _BrokenOff(_reason(exc)) from exc
    with response:
        transfer.begin(response)
        transfer.copy(response)


def fetch(
    url: str,
    target: str,
    by_hand: str,
    retries: int = 5,
    read_timeout_s: float = 60.0,
    progress: bool = True,
    label: str | None = None,
    backoff_s: float = DOWNLOAD_BACKOFF_S,
) -> Fetched:
    """Download url to target (its folder must exist). by_hand: the end of every error line, saying where to put
    the file when it is fetched by hand (e.g. "download it by hand to ./datasets/facades.tar.gz"). A failure
    leaves nothing at target nor beside it; target is replaced only by a whole file."""
    tmp = temporary_path(target)
    try:
        with open(tmp, "wb") as out, Progress(label or os.path.basename(target), None, "B", progress) as bar:
            transfer = _Transfer(url, out, target, by_hand, bar)
            best, failures = 0, 0
            while True:
                try:
                    _attempt(transfer, read_timeout_s)
                    break
                except _BrokenOff as exc:
                    if transfer.offset > best:  # it moved: resume at once, with a fresh count of tries
                        best, failures = transfer.offset, 0
                        continue
                    failures += 1
                    if failures > retries:
                        raise NetworkError(
                            f"{url}: {exc} ({failures} tries without progress); check the network "
                            f"and --mirror, then run again, or {by_hand}"
                        ) from exc
                    time.sleep(min(backoff_s * 2 ** (failures - 1), DOWNLOAD_BACKOFF_MAX_S))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        fsync_folder(os.path.dirname(os.path.abspath(target)))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    return Fetched(url, target, transfer.offset, transfer.resumed, transfer.restarted)
