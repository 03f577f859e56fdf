"""A checkpoint save as a transaction: the files of one save become visible together, or not at all.

Why a manifest written last rather than a generation folder: the file names (latest_net_G.safetensors, …) are what
the README, `fastpix test` and a reference user look for, so the newest set must live under them. A save
(write_set) is a small redo log:
  1. every file of the set is written under a temporary name of its own (files.temporary_path: unique to this
     save, so no later save, not even one of the same iteration, ever writes to it) and fsynced: a kill or a full
     disk here leaves the previous set and its manifest as they were (the temporaries are removed later);
  2. checkpoint.json is replaced atomically, naming the new files, their temporaries, sizes and hashes: the commit;
  3. the temporaries are renamed over the old files. A kill among these renames is finished by `recover` at the
     next start, from the manifest, renaming only a temporary whose hash is the manifest's, so a resume sees
     exactly one set, which load verifies against the hashes.
Until that start, readers (`fastpix test`, predict, eval, export) read such a file from the temporary the manifest
names, verified by its hash (committed_bytes): they never rename, as a training process may hold the folder.

write_set takes the files of the set already made, as bytes or as Streams (a file written piece by piece from memory
the caller holds: a snapshot's tensors); each is hashed as it is written, a MiB at a time, in one pass over memory.
Taking the snapshot (on the training thread) and writing it (on the background writer, store/checkpoint_writer.py)
are separate steps; a writer told to abandon its save (a second Ctrl-C) stops before the commit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import xxhash

from fastpix.errors import CheckpointError
from fastpix.files import TMP_PREFIX, atomic_write_json, disk_full, fsync_folder, temporary_path, write_new
from fastpix.store.run_config import read_json

MANIFEST = "checkpoint.json"
HASH_PIECE = 1 << 20  # hashed then written while it is still in the CPU's cache
# The manifest's hash of each file, by its key in the manifest entry; a save writes the first. It is there to find a
# damaged or torn file, not an attacker (who could rewrite the manifest too), so a fast non-cryptographic hash serves:
# xxh3-128 hashes 21.6 GB/s on one Zen 5 core against sha256's 1.75, and sha256 was ~45% of the background writer's
# CPU time at unet_256 (0.38 of 0.8 s a save), CPU time taken from training on a 2-core machine
# (bench/checkpoint_stall.py). Manifests written with sha256 (fastpix before this) are still verified by it.
HASHES: dict[str, Callable[[], Any]] = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}
SAVE_HASH = next(iter(HASHES))


@dataclasses.dataclass(frozen=True)
class Stream:
    """A file of a set written piece by piece (write(f) calls f.write with bytes-like pieces), never whole in
    memory. nbytes: what it writes, or at least that (for the room check and a full disk's message)."""

    nbytes: int
    write: Callable[[Any], object]  # given a binary file, or a file-like object that hashes what it writes


class Abandoned(Exception):
    """A save stopped before its commit because it was told to (write_set's `abandoned`)."""


class _Hashing:
    """The file a Stream writes into: each piece hashed and counted on its way to the file."""

    def __init__(self, f: BinaryIO):
        self.f, self.digest, self.size = f, HASHES[SAVE_HASH](), 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, view.nbytes, HASH_PIECE):
            piece = view[start : start + HASH_PIECE]
            self.digest.update(piece)
            self.f.write(piece)
        self.size += view.nbytes
        return view.nbytes

    def flush(self):
        self.f.flush()


def _write_bytes(data: bytes, f):
    f.write(data)


class _Member:
    """One file of a save, as files.write_new writes it; its hash and size are those of its last writing."""

    def __init__(self, data: bytes | Stream):
        self.stream = data if isinstance(data, Stream) else Stream(len(data), functools.partial(_write_bytes, data))
        self.digest: str | None = None
        self.size = 0

    def __call__(self, f: BinaryIO):
        sink = _Hashing(f)
        self.stream.write(sink)
        self.digest, self.size = sink.digest.hexdigest(), sink.size


def write_set(
    run_dir: str, files: Mapping[str, bytes | Stream], info: dict, abandoned: Callable[[], bool] = lambda: False
):
    """Write files (name -> contents) as one checkpoint set with manifest info (iteration, epoch); see the module
    docstring for the order. A full disk is found before anything is written where the free space tells it. When
    `abandoned()` turns true before the commit, the temporaries are removed and Abandoned is raised."""
    members = {name: _Member(data) for name, data in files.items()}
    needed = sum(m.stream.nbytes for m in members.values())
    note = f"; the previous checkpoint ({MANIFEST}) is intact"
    if shutil.disk_usage(run_dir).free < needed:
        raise disk_full(os.path.join(run_dir, next(iter(files))), needed, note)
    entries, temporaries = {}, []
    try:
        for name, member in members.items():
            _unless_abandoned(abandoned, info)
            temporaries.append(temporary_path(os.path.join(run_dir, name)))
            write_new(temporaries[-1], member, needed, note)
            entries[name] = {"tmp": os.path.basename(temporaries[-1]), "bytes": member.size, SAVE_HASH: member.digest}
        _unless_abandoned(abandoned, info)
        atomic_write_json(os.path.join(run_dir, MANIFEST), {**info, "files": entries})
    except BaseException:
        if _committed(run_dir, entries):  # interrupted just after the commit: the new set stands
            _rename_into_place(run_dir, entries)
        else:
            for tmp in temporaries:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
        raise
    _rename_into_place(run_dir, entries)


def _unless_abandoned(abandoned: Callable[[], bool], info: dict):
    if abandoned():
        raise Abandoned(f"the save of iteration {info.get('iteration')} was abandoned before its commit")


def _committed(run_dir: str, entries: dict) -> bool:
    try:
        return (read_manifest(run_dir) or {}).get("files") == entries
    except CheckpointError:
        return False


def _rename_into_place(run_dir: str, entries: dict):
    """The renames of a save this process wrote (and so knows whole)."""
    for name, entry in entries.items():
        tmp = os.path.join(run_dir, entry["tmp"])
        if os.path.exists(tmp):
            os.replace(tmp, os.path.join(run_dir, name))
    fsync_folder(run_dir)  # the renames themselves durable


def read_manifest(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or "iteration" not in manifest:
        raise CheckpointError(f"{path}: not a fastpix checkpoint manifest")
    return manifest


def _pending(run_dir: str, manifest: dict | None) -> dict:
    pending = {}
    for name, entry in (manifest or {}).get("files", {}).items():
        tmp = entry.get("tmp") if isinstance(entry, dict) else None
        if (
            isinstance(tmp, str)
            and tmp.startswith(TMP_PREFIX)
            and os.path.basename(tmp) == tmp
            and os.path.isfile(os.path.join(run_dir, tmp))
        ):
            pending[name] = entry
    return pending


def pending_files(run_dir: str) -> dict:
    """name -> manifest entry of the newest committed save's files still under their temporary names (a save killed
    between its commit and its renames; the first save of a run leaves then no file under the names themselves)."""
    try:
        return _pending(run_dir, read_manifest(run_dir))
    except (CheckpointError, OSError):  # a damaged manifest is a resume's problem (load), not a reader's
        return {}


def committed_bytes(path: str) -> bytes | None:
    """The contents of `path` as the newest committed save left them, when that save was killed between its commit
    and the rename of this file: read from the temporary its manifest names, and only if that temporary is whole
    (its hash is the manifest's). None otherwise: the file under its own name is the committed one."""
    run_dir, name = os.path.split(os.path.abspath(path))
    entry = pending_files(run_dir).get(name)
    if entry is None:
        return None
    try:
        with open(os.path.join(run_dir, entry["tmp"]), "rb") as f:  # one read: a rename meanwhile leaves it whole
            data = f.read()
    except OSError:  # renamed (the file under its name is then this one) or removed by a train's recover
        return None
    return data if _matches(entry, lambda digest: digest.update(data)) else None


def recover(run_dir: str):
    """Finish the renames of a save killed after its commit, renaming only temporaries whose contents are the
    manifest's (anything else under a temporary name is not what was committed), then remove every other
    temporary (of saves killed before their commit, or of any atomic write). Only the process holding the run's
    lock may call this."""
    for name, entry in _pending(run_dir, read_manifest(run_dir)).items():
        tmp = os.path.join(run_dir, entry["tmp"])
        if os.path.getsize(tmp) == entry.get("bytes") and _file_matches(entry, tmp):
            os.replace(tmp, os.path.join(run_dir, name))
    fsync_folder(run_dir)
    for name in os.listdir(run_dir):
        if name.startswith(TMP_PREFIX):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(run_dir, name))


def _matches(entry: dict, feed: Callable[[Any], object]) -> bool:
    """Whether the contents that `feed` gives a hash object have the hash the manifest entry records (under the
    first of HASHES it has; an entry with none matches nothing)."""
    name = next((name for name in HASHES if isinstance(entry.get(name), str)), None)
    if name is None:
        return False
    digest = HASHES[name]()
    feed(digest)
    return digest.hexdigest() == entry[name]


def _file_matches(entry: dict, path: str) -> bool:
    def feed(digest):
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)

    return _matches(entry, feed)


def verify_set(run_dir: str, manifest: dict):
    """Each file of the manifest exists with its recorded contents (hash): the set is whole and unchanged."""
    for name, entry in manifest["files"].items():
        path = os.path.join(run_dir, name)
        if not os.path.isfile(path):
            raise CheckpointError(
                f"{path}: missing, but {MANIFEST} lists it in the checkpoint of iteration {manifest['iteration']}"
            )
        if not _file_matches(entry, path):
            raise CheckpointError(
                f"{path}: its contents differ from the checkpoint of iteration "
                f"{manifest['iteration']} that {MANIFEST} records (changed or damaged since)"
            )
