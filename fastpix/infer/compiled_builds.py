"""Packages for a CompiledNetwork, off the caller's thread: loaded from the cache folder, or built there first by a
child process, one at a time, and handed to the network from its next call on.

Why a child process, not a thread: a build is mostly Python (export, lowering, code generation) holding the GIL
for seconds, then a C++ compiler. In a thread of the serving process it takes the GIL from the thread that runs
the requests at every switch interval, and its CPU time cannot be ranked below theirs; in a child it shares
nothing but the cores, and runs at the lowest CPU priority (SCHED_IDLE: compiler_child.py) with one thread
(torch's, Inductor's compile workers, OpenMP's), so it takes only what the serving process leaves idle: at most one
core, and none while the cores are busy. A server that is never idle would then stay eager for good, so a build
starved that way (STARVED_SHARE) is started again at nice 10, which takes a share beside the requests. Measured in
bench/compile_in_background.py (docs/benchmarks.md, "Compiling in the background"). The child starts with the
first build asked for and ends when none is left; the network reaches it once (compiler_child.network_file).

The parent's own share of a build (starting the child and handing it the network; loading a built package and
running it once) waits until no call of the network is running (QUIET_WAIT_S at most): the request whose new size
asked for the build is answered first.

One thread per network (started when a package is asked for, ended when none is left) does the rest: it loads each
package (holding a lease on its file: fastpix.cache_folders), checks it against the shape, dtype and key it is for,
runs it once on zeros so that oneDNN creates its primitives before a request does, hands it over, then bounds the
cache folder (compiled_cache.prune). Every step of more than a moment is said in the log ("fastpix.*" loggers).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import Connection

import torch

from fastpix.cache_folders import Lease, remove_path
from fastpix.infer import compiled_cache
from fastpix.infer.compiled_cache import package_path, remember_failure, remembered_failure, shape_name
from fastpix.infer.compiled_packages import load_package
from fastpix.infer.compiler_child import network_file, one_line

log = logging.getLogger(__name__)

BUILD_PRIORITY = "idle"  # the child's CPU priority (compiler_child.lower_priority): the lowest, see the docstring
QUIET_WAIT_S = 2.0  # how long the parent's share of a build waits for the network to be between calls
# A server that is never idle leaves a SCHED_IDLE build next to nothing, and would stay eager for good (a load test
# on a fresh server). A build that got less than STARVED_SHARE of a core over STARVED_AFTER_S is started again in a
# child at BUSY_PRIORITY, which takes a share of the cores beside the requests (docs/benchmarks.md, "Compiling in
# the background": what a nice-10 build costs a saturated server, and how long it takes there).
STARVED_AFTER_S = 60.0
STARVED_SHARE = 0.1
BUSY_PRIORITY = "10"
STOP_GRACE_S = 2.0  # a child stopped at once has this long to remove its build files, then is killed (prune does it)


class BuildFailed(Exception):
    """A build that did not give a package; its message is the reason, in one line."""


class Starved(Exception):
    """A build whose child got less than STARVED_SHARE of a core over STARVED_AFTER_S; args: that share."""


class LoadedPackage:
    """A package in use: the loaded package and the lease that keeps its file in the cache."""

    def __init__(self, package, lease: Lease):
        self.package, self.lease = package, lease

    def release(self):
        self.lease.release()


class Builder:
    """The background work of one CompiledNetwork (`runner`): request(shape) queues a shape (once), and the
    runner's install() receives its package when it is ready; a shape that cannot be had is recorded in
    runner.failures and logged once."""

    def __init__(self, runner, priority: str = BUILD_PRIORITY):
        self.runner, self.priority = runner, priority
        self._queue: list = []  # shapes asked for, not yet started
        self._current = None  # the shape being provided
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._child: CompilerProcess | None = None
        self._closed = False
        self._started = None  # when the current burst of work began (for the "all built" line)

    def request(self, shape):
        with self._cond:
            if self._closed or shape == self._current or shape in self._queue:
                return
            self._queue.append(shape)
            if self._thread is None:
                self._started = time.monotonic()
                self._thread = threading.Thread(target=self._work, name="fastpix-compiler", daemon=True)
                self._thread.start()

    def pending(self) -> list:
        with self._cond:
            return ([self._current] if self._current is not None else []) + list(self._queue)

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._thread is None, timeout)

    def close(self):
        unfinished = [shape_name(s) for s in self.pending()]
        with self._cond:
            self._closed = True
            self._queue.clear()
            child, thread = self._child, self._thread
        if unfinished:
            log.info("stopped compiling %s (a later run compiles it)", ", ".join(unfinished))
        if child is not None:
            child.stop(at_once=True)
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _work(self):
        while True:
            with self._cond:
                if not self._queue or self._closed:  # done: this thread and the child end
                    child, self._child, self._thread = self._child, None, None
                    break
                self._current = self._queue.pop(0)
            try:
                self._provide(self._current)
            except Exception as exc:  # noqa: BLE001 - whatever went wrong, that shape runs eagerly
                self._failed(self._current, str(exc) if isinstance(exc, BuildFailed) else one_line(exc))
            finally:
                with self._cond:
                    self._current = None
        status = self.runner.status()
        if not self._closed and status["compiled"]:
            log.info(
                "compiled and loaded: %s (after %.1f s in the background)",
                ", ".join(status["compiled"]),
                time.monotonic() - self._started,
            )
        with self._cond:
            self._cond.notify_all()
        if child is not None:
            child.stop()

    def _provide(self, shape):
        """Load shape's package into the runner: from the cache folder, else built there first (once more if the
        file found turns out not to be a package for this shape)."""
        runner = self.runner
        path = package_path(runner.folder, shape)
        for _ in range(2):
            built = False
            if not os.path.exists(path):
                reason = remembered_failure(runner.folder, shape)
                if reason is not None:
                    self._failed(
                        shape, f"{reason} (an earlier run's build: `fastpix cache clear --compiled` tries again)"
                    )
                    return
                self._build(shape, path)
                built = True
            if self.load(shape) is None:
                if built:
                    compiled_cache.prune(runner.max_bytes, runner.cache_dir)
                return
        raise BuildFailed(f"{path} is still not a package for {shape_name(shape)} after building it")

    def load(self, shape) -> str | None:
        """Load shape's package from the cache folder into the runner, checked and run once on zeros (so that
        oneDNN creates its primitives now, not in a request): None when done, else why not. A file that is not a
        package for this shape is removed (and said)."""
        runner = self.runner
        path = package_path(runner.folder, shape)
        try:
            lease = Lease(path)
        except FileNotFoundError:  # not built, or removed by another process's cache bound
            return "absent"
        try:
            package = load_package(path)
            wrong = package.mismatch(shape, runner.dtype, runner.key)
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: build it again
            package, wrong = None, f"it does not load ({one_line(exc)})"
        if wrong:
            lease.release()
            log.warning("%s: %s; building it again", path, wrong)
            remove_path(path)
            return wrong
        assert package is not None  # it loaded: wrong is empty
        runner.wait_quiet(QUIET_WAIT_S)
        with torch.inference_mode():
            package(torch.zeros(shape, dtype=runner.dtype).contiguous(memory_format=torch.channels_last))
        runner.install(shape, LoadedPackage(package, lease))
        return None

    def _build(self, shape, path):
        runner = self.runner
        log.info(
            "compiling the generator for batch piece %d at %dx%d in the background (eager until it is built)",
            shape[0],
            shape[2],
            shape[3],
        )
        started = time.monotonic()
        child = self._child or self._start_child(self.priority)
        if self._closed:
            child.stop(at_once=True)
            raise BuildFailed("stopped")
        os.makedirs(runner.folder, exist_ok=True)
        compiled_cache.describe(runner.folder, runner.description)
        build = (shape, runner.dtype, path, runner.key, runner.cache_dir)
        try:
            error = child.build(*build, patient=child.priority != "idle")
        except Starved as starved:
            log.info(
                "compiling %s got %.0f%% of a core in the last %.0f s (the cores are busy serving): starting it again "
                "at nice %s, beside the requests",
                shape_name(shape),
                100 * starved.args[0],
                STARVED_AFTER_S,
                BUSY_PRIORITY,
            )
            child.stop(at_once=True)
            error = "stopped" if self._closed else self._start_child(BUSY_PRIORITY).build(*build)
        if error is not None:
            if self._closed:
                raise BuildFailed("stopped")
            remember_failure(runner.folder, shape, error)
            raise BuildFailed(error)
        log.info(
            "compiled %s in %.1f s: it runs compiled from the next call on",
            shape_name(shape),
            time.monotonic() - started,
        )

    def _start_child(self, priority: str) -> CompilerProcess:
        """A compiler process for the runner's network, started between calls (QUIET_WAIT_S at most): pickling the
        network into it is CPU work in this process. Only this thread sets _child; not under the lock."""
        self.runner.wait_quiet(QUIET_WAIT_S)
        child = CompilerProcess(self.runner.net, priority)
        with self._cond:
            self._child = child
        return child

    def _failed(self, shape, reason: str):
        if self._closed:
            return
        self.runner.fail(shape, reason)
        log.warning("compiling the generator for %s failed (%s); that size runs eagerly", shape_name(shape), reason)


class CompilerProcess:
    """A child Python process that builds packages of one network (see the module docstring)."""

    def __init__(self, net: torch.nn.Module, priority: str):
        self.priority = priority
        network_fd, structure = network_file(net)
        ours, theirs = socket.socketpair()
        source_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TORCHINDUCTOR_COMPILE_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [source_root, os.environ.get("PYTHONPATH")])),
        }
        # The packages' kernels must use the threads of the process that runs them: Inductor writes the count into
        # the code it generates, from torch's thread count in the process that compiles.
        args = [
            sys.executable,
            "-m",
            "fastpix.infer.compiler_child",
            str(theirs.fileno()),
            str(network_fd),
            priority,
            str(torch.get_num_threads()),
        ]
        self.proc = subprocess.Popen(
            args,
            pass_fds=[theirs.fileno(), network_fd],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        theirs.close()
        os.close(network_fd)  # the child holds it now
        self.conn = Connection(ours.detach())
        # Not a process left behind by an interpreter that exits without close(): at exit it is stopped.
        weakref.finalize(self, stop_process, self.proc)
        self.conn.send_bytes(structure)

    def build(self, shape, dtype: torch.dtype, path: str, key: str, build_parent: str, patient=True) -> str | None:
        """Build the package; None when it is written, else why not in one line. Not patient: raise Starved when
        the child gets less than STARVED_SHARE of a core over a STARVED_AFTER_S (where its CPU time is known)."""
        try:
            self.conn.send((tuple(shape), str(dtype).removeprefix("torch."), path, key, build_parent))
            if not patient:
                self._wait_unless_starved()
            return self.conn.recv()
        except (EOFError, OSError):
            code = self.proc.wait()
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            return f"the compiler process ended ({how}; out of memory?)"

    def _wait_unless_starved(self):
        """Wait for the child's answer, checking every STARVED_AFTER_S that it got at least STARVED_SHARE of a core
        (where its CPU time is known); Starved when it did not."""
        checked = (time.monotonic(), process_cpu_s(self.proc.pid))
        while not self.conn.poll(STARVED_AFTER_S):
            now = (time.monotonic(), process_cpu_s(self.proc.pid))
            if now[1] is not None and checked[1] is not None:
                share = (now[1] - checked[1]) / (now[0] - checked[0])
                if share < STARVED_SHARE:
                    raise Starved(share)
            checked = now

    def stop(self, at_once: bool = False):
        """End the child: when it has finished its build (it exits once the connection closes), or at once
        (a build in progress is abandoned; its files are removed by the child, or by a later prune). At once is
        SIGTERM, then SIGKILL after STOP_GRACE_S: a child at SCHED_IDLE beside busy cores may not get the CPU to
        run its handler for minutes."""
        self.conn.close()
        try:
            self.proc.wait(None if not at_once else 0)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def process_cpu_s(pid: int) -> float | None:
    """The CPU seconds of a process and of the children it has waited for (the C++ compiler), from Linux's
    /proc/<pid>/stat; None where that is not known."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(t) for t in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def stop_process(proc: subprocess.Popen):
    if proc.poll() is None:
        proc.terminate()
        proc.wait()
