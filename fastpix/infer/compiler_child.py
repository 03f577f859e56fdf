"""The compiler process's program (compiled_builds.CompilerProcess starts it): builds the packages its parent asks
for, one after another, until the parent closes the connection.

It lowers its own CPU priority first, before importing torch: the import alone is a second or more of CPU, and a
child that imported at the server's priority made the request that had asked for its build ~2x slower (unet_256,
320x240: 373 ms against 179 ms eager with no build). The priority is SCHED_IDLE where Linux has it: a thread of
normal priority that wakes preempts it at once. Nice 19 does not: Linux's scheduler (EEVDF) lets a nice-19 task
finish its time slice, a few ms, each time it gets a core, and the serving threads wake and sleep many times per
request; the eager calls beside a nice-19 build were the slower in the same comparison (docs/benchmarks.md,
"Compiling in the background"). The compilers it runs (Inductor's C++ compiler) inherit the policy. Elsewhere it
runs at nice 19.

The network reaches it once (network_file): its structure pickled, its tensors' bytes written as they lie in memory
to a memory file the child inherits, one write per tensor with the GIL released. torch.save to the child's socket
took ~0.1 s of CPU holding the GIL (unet_256 bf16), then hundreds of partial socket writes each taking the GIL
back, slowing the requests the server was answering meanwhile.

Nothing heavy is imported at the top of this module, so that `python -m fastpix.infer.compiler_child` has lowered
its priority before torch is loaded.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys

from fastpix.files import write_all  # the standard library only: nothing heavy before lower_priority


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def lower_priority(priority: str):
    """priority: 'idle' (SCHED_IDLE, else nice 19 where the system has no such policy) or a nice value."""
    if priority == "idle":
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
        except (AttributeError, OSError):
            priority = "19"
    os.nice(int(priority))


class _NetworkPickler(pickle.Pickler):
    """Pickles a module with its storages' bytes written to `file` instead (shared storages once), each named by
    (offset, nbytes, dtype) there."""

    def __init__(self, structure, file: int):
        super().__init__(structure, protocol=pickle.HIGHEST_PROTOCOL)
        self.file, self.size = file, 0
        self._placed: dict[tuple[int, int], int] = {}  # (data_ptr, nbytes) -> offset in file

    def persistent_id(self, obj):
        import torch

        if not isinstance(obj, torch.storage.TypedStorage):
            return None
        storage = obj._untyped_storage  # as torch.save reads it (TypedStorage's public methods warn)
        key = (storage.data_ptr(), storage.nbytes())
        if key not in self._placed:
            self._placed[key] = self.size
            view = memoryview(torch.empty(0, dtype=torch.uint8).set_(storage).numpy())  # its bytes, not copied
            write_all(self.file, view)  # one write, the GIL released, for all but a huge storage
            self.size += view.nbytes
        return self._placed[key], storage.nbytes(), str(obj._dtype).removeprefix("torch.")


class _NetworkUnpickler(pickle.Unpickler):
    def __init__(self, structure, file: int):
        super().__init__(structure)
        self.file = file
        self._read: dict = {}  # (offset, nbytes) -> the storage read

    def persistent_load(self, pid):
        import torch

        offset, nbytes, dtype = pid
        if not nbytes:
            storage = torch.UntypedStorage(0)
        elif (offset, nbytes) in self._read:  # a storage shared by several tensors is read once, and shared again
            storage = self._read[offset, nbytes]
        else:
            data = bytearray(os.pread(self.file, nbytes, offset))
            storage = self._read[offset, nbytes] = torch.frombuffer(data, dtype=torch.uint8).untyped_storage()
        return torch.storage.TypedStorage(wrap_storage=storage, dtype=getattr(torch, dtype), _internal=True)


def network_file(net) -> tuple[int, bytes]:
    """(a file descriptor, the pickled structure) of a CPU module for receive_network: its tensors' bytes are in
    an anonymous memory file (memfd; an unlinked temporary file where there is none) that the child inherits."""
    import io
    import tempfile

    if hasattr(os, "memfd_create"):
        file = os.memfd_create("fastpix-network")
    else:
        file, path = tempfile.mkstemp(prefix="fastpix-network-")
        os.unlink(path)
    structure = io.BytesIO()
    _NetworkPickler(structure, file).dump(net)
    return file, structure.getvalue()


def receive_network(structure: bytes, file: int):
    import io

    return _NetworkUnpickler(io.BytesIO(structure), file).load()


def main(fd: int, network_fd: int, priority: str, threads: int):
    """The network's structure arrives first (its tensors are in network_fd: network_file), then one build request
    after another."""
    lower_priority(priority)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a parent that stops the build: remove its files
    from multiprocessing.connection import Connection

    import torch

    from fastpix.infer.compiled_packages import build_package

    conn = Connection(fd)
    torch.set_num_threads(1)
    torch._inductor.config.cpp.threads = threads
    net = receive_network(conn.recv_bytes(), network_fd)
    os.close(network_fd)
    while True:
        try:
            shape, dtype, path, key, build_parent = conn.recv()
        except (EOFError, OSError):
            return
        try:
            example = torch.zeros(shape, dtype=getattr(torch, dtype)).contiguous(memory_format=torch.channels_last)
            build_package(net, example, path, build_parent, key)
            conn.send(None)
        except Exception as exc:  # noqa: BLE001 - said to the parent, which remembers it
            conn.send(one_line(exc))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
