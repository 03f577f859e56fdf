"""The Predictor's compiled CPU path: the inference network as AOTInductor packages with frozen weights, cached on disk,
built in the background while the network runs eagerly.

What runs (runtime 'compiled'): a copy of the inference network (BatchNorm already folded for norm_mode running,
per-image statistics for instance: norm_modes.py) in channels-last, its output layer in sub-pixel form (subpixel.py),
its weights pre-cast to bf16 when the precision is bf16, exported (torch.export) and compiled ahead of time by
AOTInductor with freezing (weights become constants: oneDNN prepacks them once and fuses conv + bias + activation).
One package per (batch piece, padded size): a batch is cut into pieces of 2 and 1 images on two threads (up to 8, 4,
2, 1 with more: batch_pieces), so a few packages per size are ever built and no image is computed twice. Cutting is
exact because the modes compiled here treat every image on its own (instance, running; dropout off).

Why ahead of time: a package is a shared library plus its constants, loaded in ~0.1 s at unet_256, where
torch.compile re-traces and re-lowers the network in every process (~4 s before its first image even with its
kernels cached); its steady calls equal torch.compile's (docs/benchmarks.md, "CPU at real size: unet_256").

Nothing waits for the compiler: a piece whose package is not loaded yet runs at once on the same network eagerly
(its bf16 channels-last copy: within bf16 rounding of the package's result), while compiled_builds.py loads the
package from the cache folder, or builds it there first (~12 s at unet_256, in a child process), from the next call
on. A size whose build failed stays eager (said once, remembered on disk: compiled_cache.py). A package is checked
against the shape, dtype and key it was built for (its own metadata) before it is used: a file copied under another
name is built again, never run out of bounds. At most max_loaded packages stay loaded (the least recently used is
dropped first: each holds its own copy of the weights, ~110 MB on disk and ~220 MB resident at unet_256 bf16).
Whether this runtime runs at all is the Predictor's plan (plan.py); docs/design.md, "The CPU runtime".
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict

import torch
import torch.nn as nn

from fastpix import runtime
from fastpix.cache_folders import GB
from fastpix.config import COMPILE_CACHE_MAX_GB, MAX_LOADED_PACKAGES
from fastpix.infer import compiled_cache
from fastpix.infer.compiled_builds import Builder
from fastpix.infer.compiled_cache import package_folder, shape_name
from fastpix.infer.subpixel import subpixel_outputs

# What prepared_network makes of a network, in the packages' key so that a package built from another form is never
# loaded for this one: 1 kept the output layer a transposed conv, 2 has it in its sub-pixel form (subpixel.py).
NETWORK_FORM = 2


def batch_pieces(threads: int) -> tuple[int, ...]:
    """The batch sizes a batch is cut into: powers of two up to one image per thread (at least 2, at most 8). One
    image per thread keeps every core busy in the inner layers (1×1 to 8×8 pixels); beyond that a bigger piece
    only adds a package to build and hold (~110 MB each at unet_256 bf16) and buffers too big for glibc to reuse.
    On two cores (unet_256 bf16, batch 8) pieces of 2 and one piece of 8 ran within noise of each other, the piece
    of 8 with ~24,500 page faults per call (docs/benchmarks.md, "CPU at real size: unet_256")."""
    top = min(8, max(2, 2 ** (max(threads, 1).bit_length() - 1)))
    return tuple(2**k for k in range(top.bit_length() - 1, -1, -1))


def weights_key(network: nn.Module, *parts) -> str:
    """A hash of the network's tensors (names, shapes, dtypes, values) and of everything in parts."""
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
    for name, t in list(network.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


def cache_key(network: nn.Module, norm_mode: str, precision: str) -> str:
    return weights_key(
        network, type(network).__name__, norm_mode, precision, torch.__version__, runtime.cpu_features(), NETWORK_FORM
    )


class CompiledNetwork:
    """network(batch) with the compiled packages where they are loaded, eagerly elsewhere; batch and result are
    float32, the result channels-last. See the module docstring.

    The packages already in the cache folder (the most recently used first, up to max_loaded and max_batch_size
    images) are loaded when it is made. status() says which shapes run compiled, which are being
    built, and which failed; wait() waits for the builds asked for so far; close() stops them."""

    def __init__(
        self,
        network: nn.Module,
        norm_mode: str,
        precision: str,
        cache_dir: str | None = None,
        max_batch_size: int | None = None,
        key: str | None = None,
        *,
        max_loaded: int = MAX_LOADED_PACKAGES,
        cache_max_gb: float = COMPILE_CACHE_MAX_GB,
        source: str | None = None,
    ):
        self.precision = precision
        self.key = key or cache_key(network, norm_mode, precision)  # key: the caller's cache_key, when it has one
        self.cache_dir = compiled_cache.cache_root(cache_dir)
        self.folder = package_folder(self.key, cache_dir)
        self.net, self.dtype = prepared_network(network, precision)
        self.channels = next(m for m in self.net.modules() if isinstance(m, nn.Conv2d)).in_channels
        self.pieces = batch_pieces(torch.get_num_threads())
        self.max_loaded, self.max_bytes = max(1, max_loaded), cache_max_gb * GB
        self.description = {
            "network": type(network).__name__,
            "norm_mode": norm_mode,
            "precision": precision,
            "key": self.key,
            "source": source,
            "torch": torch.__version__,
            "cpu": runtime.cpu_features(),
        }
        self.loaded: OrderedDict = OrderedDict()  # (n, c, h, w) -> LoadedPackage, the least recently used first
        self.failures: dict = {}  # (n, c, h, w) -> why its package could not be built or loaded
        self._lock = threading.Lock()
        self._calls = 0  # calls running now (the builder's share of a build waits for none: wait_quiet)
        self._quiet = threading.Condition(self._lock)
        self.builder = Builder(self)
        # Loaded now (~0.1 s each at unet_256, not a build): the first call of a fresh process is a steady call.
        for n, h, w in compiled_cache.cached_shapes(self.folder)[: self.max_loaded]:
            if (max_batch_size is None or n <= max_batch_size) and self.builder.load((n, self.channels, h, w)):
                self.builder.request((n, self.channels, h, w))  # not a package for it: built in the background

    @property
    def failed(self) -> str | None:
        """Why the last build that failed did (None when none has)."""
        with self._lock:
            return next(reversed(self.failures.values()), None)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self._calls += 1
        try:
            x = batch.to(self.dtype).contiguous(memory_format=torch.channels_last)
            pieces, start = [], 0
            while start < x.shape[0]:
                size = next(b for b in self.pieces if b <= x.shape[0] - start)
                pieces.append(self._run(x[start : start + size].contiguous(memory_format=torch.channels_last)))
                start += size
            return (pieces[0] if len(pieces) == 1 else torch.cat(pieces)).float()
        finally:
            with self._lock:
                self._calls -= 1
                self._quiet.notify_all()

    def wait_quiet(self, timeout: float) -> bool:
        """Wait until no call is running (at most timeout seconds; False if one still is): the builder's CPU work in
        this process then does not slow a request, the one that asked for the build first of all."""
        with self._quiet:
            return self._quiet.wait_for(lambda: self._calls == 0, timeout)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        package = self.package(tuple(x.shape))
        if package is not None:
            return package(x)
        with torch.inference_mode():
            return self.net(x)

    def package(self, shape):
        """The loaded package for this shape, or None after asking for it (it runs from a later call on)."""
        with self._lock:
            loaded = self.loaded.get(shape)
            if loaded is not None:
                self.loaded.move_to_end(shape)
                return loaded.package
            failed = shape in self.failures
        if not failed:
            self.builder.request(shape)
        return None

    def prepare(self, size: tuple[int, int], max_batch_size: int | None = None):
        """Ask for the packages of every batch piece at padded size (h, w) (up to max_batch_size images), the
        smallest first: builds run one at a time, and a lone request (a person at the draw page, a light load) runs
        as a piece of 1."""
        for n in reversed(self.pieces):
            if max_batch_size is None or n <= max_batch_size:
                self.package((n, self.channels, *size))

    def install(self, shape, loaded):
        """Called by the builder: from now on `shape` runs `loaded`; the least recently used beyond max_loaded are
        dropped (their leases released: the cache may then remove their files)."""
        with self._lock:
            self.loaded[shape] = loaded
            self.loaded.move_to_end(shape)
            while len(self.loaded) > self.max_loaded:
                _, dropped = self.loaded.popitem(last=False)
                dropped.release()

    def fail(self, shape, reason: str):
        """Called by the builder: `shape` stays eager, for `reason`."""
        with self._lock:
            self.failures[shape] = reason

    def status(self) -> dict:
        """{"compiled": [...], "building": [...], "failed": {shape: why}}, shapes named <n>x<h>x<w>."""
        with self._lock:
            compiled, failures = sorted(self.loaded), sorted(self.failures.items())
        return {
            "compiled": [shape_name(s) for s in compiled],
            "building": [shape_name(s) for s in self.builder.pending()],
            "failed": {shape_name(s): why for s, why in failures},
        }

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every package asked for so far is loaded (or failed); False if timeout came first."""
        return self.builder.wait(timeout)

    def close(self):
        """Stop building (a build in progress is abandoned: a later run builds it) and drop the loaded packages."""
        self.builder.close()
        with self._lock:
            while self.loaded:
                self.loaded.popitem()[1].release()


def prepared_network(network: nn.Module, precision: str):
    """(a channels-last copy of network in eval mode, its output layer in sub-pixel form (subpixel.py), with its
    weights cast to the precision's dtype, that dtype): what a package is built from, and what runs eagerly until it
    is. Pre-cast once, rather than autocast casting every weight per call. Its form is NETWORK_FORM."""
    dtype = runtime.PRECISIONS[precision]
    net = copy.deepcopy(network)
    if getattr(net, "fused_forward", None) is None:  # a fused forward (backend triton) does not run the modules
        net = subpixel_outputs(net)
    # Module.to's stubs lack memory_format (torch documents it): as in predictor.py
    return net.to(memory_format=torch.channels_last).eval().to(dtype), dtype  # type: ignore[call-overload]
