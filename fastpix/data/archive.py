"""Extracting a downloaded .tar(.gz) so that nothing lands outside its folder and no half data set is left behind.

Every member is checked before anything is written (a first pass over the archive): it must be a directory or a
regular file whose name lies under the archive's expected top folder — no absolute name, no `..`, no symbolic or hard
link, no device or FIFO. That is what tarfile's "data" filter refuses, and links besides (the pix2pix archives have
none). It is implemented here rather than with tarfile's `filter=` (Python 3.12, and 3.10/3.11 only from their
security releases) so that it holds on every Python fastpix supports; and the files are written by this module (with
the user's umask, no owner, mode or device bits taken from the archive), never by tarfile.extract. They go into a
hidden temporary folder beside the destination, renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import zlib

from fastpix.errors import DataError, UnsafeArchive
from fastpix.files import TMP_PREFIX, disk_full, fsync_folder, is_disk_full, temporary_path
from fastpix.progress import Progress

# Room for each file's blocks and directory entry beyond its bytes, in the free-space check.
PER_FILE_OVERHEAD = 4096
# What reading a damaged, truncated or foreign archive raises (gzip's BadGzipFile is an OSError).
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link to {member.linkname}"
    if member.islnk():
        return f"a hard link to {member.linkname}"
    if member.ischr() or member.isblk():
        return "a device file"
    if member.isfifo():
        return "a FIFO"
    return f"a member of tar type {member.type!r}"


def _below(name: str, top: str) -> tuple[str, ...] | None:
    """The path of a member name below top (() for top itself); None when it would land anywhere else."""
    if name.startswith("/") or os.path.isabs(name):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or parts[0] != top:
        return None
    return tuple(parts[1:])


def safe_members(tar: tarfile.TarFile, top: str, archive: str) -> list[tuple[tarfile.TarInfo, tuple[str, ...]]]:
    """(member, its path below top) for each directory and regular file of the archive; UnsafeArchive naming the
    first member that would land outside <top>/ or is neither."""
    members, files, folders = [], set[tuple[str, ...]](), set[tuple[str, ...]]()
    for member in tar.getmembers():
        path = _below(member.name, top)
        refuse = f"{archive}: refused, nothing extracted: member {member.name!r}"
        if path is None:
            raise UnsafeArchive(f"{refuse} would be written outside {top}/ (an absolute name, '..' or another folder)")
        if not (member.isdir() or member.isreg()):
            raise UnsafeArchive(f"{refuse} is {_kind(member)}; a data set holds only folders and regular files")
        folders.update(path[:k] for k in range(len(path)))
        (folders if member.isdir() else files).add(path)
        members.append((member, path))
    clash = sorted(files & folders)
    if clash:
        raise UnsafeArchive(
            f"{archive}: refused, nothing extracted: {top}/{'/'.join(clash[0])} is both a file and a folder in it"
        )
    return members


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, shown: str, needed: int):
    source = tar.extractfile(member)
    assert source is not None, "safe_members lets regular files and folders through, and folders are not written"
    try:
        with open(path, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(shown, needed, "; free some space there and run again") from exc
        raise


def _fill(tar, members, staging: str, dest: str, archive: str, progress: bool) -> int:
    """Write the checked members into the staging folder (messages name them under dest); the files written."""
    needed = sum(m.size + PER_FILE_OVERHEAD for m, _ in members if m.isreg())
    if shutil.disk_usage(os.path.dirname(staging)).free < needed:
        raise disk_full(dest, needed, "; free some space there and run again")
    files = [(m, p) for m, p in members if m.isreg()]
    for member, path in members:
        if member.isdir():
            os.makedirs(os.path.join(staging, *path), exist_ok=True)
    with Progress(f"extracting {os.path.basename(archive)}", len(files), "files", progress) as bar:
        for member, path in files:
            target = os.path.join(staging, *path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            _write_member(tar, member, target, os.path.join(dest, *path), needed)
            bar.update()
    return len(files)


def extract_tar(archive: str, top: str, dest: str, replace: bool = False, progress: bool = True) -> int:
    """The contents of <top>/ in a .tar or .tar.gz archive as the folder dest; the number of files. dest must not
    exist unless replace (then it is replaced once the new folder is whole). A refused, damaged or truncated
    archive is a DataError naming it, a full disk DiskFull; either way nothing is left at dest or beside it."""
    parent = os.path.dirname(os.path.abspath(dest))
    if os.path.lexists(dest) and not replace:
        raise DataError(f"{dest} exists already: remove it, or replace it (--force)")
    staging = temporary_path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = safe_members(tar, top, archive)
            os.makedirs(staging)
            count = _fill(tar, members, staging, dest, archive, progress)
        fsync_folder(staging)
        old = None
        if os.path.lexists(dest):
            old = os.path.join(parent, f"{TMP_PREFIX}old-{os.path.basename(staging)}")
            os.replace(dest, old)
        os.replace(staging, dest)
        fsync_folder(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return count
    except ARCHIVE_ERRORS as exc:
        if isinstance(exc, OSError) and (is_disk_full(exc) or not _is_read_error(exc)):
            raise
        raise DataError(f"{archive}: damaged or truncated ({type(exc).__name__}: {exc}); nothing extracted") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)


def _is_read_error(exc: OSError) -> bool:
    """An OSError of the archive's contents (gzip's BadGzipFile, a bad header), not of the file system."""
    return exc.errno is None
