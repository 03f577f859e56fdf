"""The Predictor's compiled CPU path: the inference network as AOTInductor packages with frozen weights, cached on disk.

What runs (runtime 'compiled'): a copy of the inference network (BatchNorm already folded for norm_mode running,
per-image statistics for instance: norm_modes.py) in channels-last, its weights pre-cast to bf16 when the precision
is bf16, exported (torch.export) and compiled ahead of time by AOTInductor with freezing (weights become constants:
oneDNN prepacks them once and fuses conv + bias + activation). One package per (batch piece, padded size): a batch
is cut into pieces of 2 and 1 images on two threads (up to 8, 4, 2, 1 with more: batch_pieces), so a few packages
per size are ever built and no image is computed twice. Cutting is exact because the modes compiled here treat
every image on its own (instance, running; dropout off).

Why ahead of time: a package is a shared library plus its constants, loaded in ~0.1 s at unet_256, where
torch.compile re-traces and re-lowers the network in every process (~4 s before its first image even with its
kernels cached); its first call costs ~2 steady calls (oneDNN creating its primitives), its steady calls equal
torch.compile's (docs/benchmarks.md, "CPU at real size: unet_256"). Building one costs ~12 s there, once per
machine: packages live in <cache_dir>/<key>/<n>x<h>x<w>.pt2, written whole then renamed (fastpix.files: a crash
never leaves half a package), where the key hashes the weights, the norm mode, the precision, torch's version and
the CPU's features: another model, precision, torch or CPU never meets these files. A package holds its own copy of
the weights (~110 MB per package at unet_256 bf16). `fastpix export --format pt2` writes the same package for
shipping. Whether this runtime runs at all is the Predictor's plan (plan.py); docs/design.md, "The CPU runtime".

If building or loading fails, the Predictor says why in one line and runs the network eagerly instead.
"""
from __future__ import annotations

import copy
import hashlib
import os
import warnings

import torch
import torch.nn as nn

from fastpix import runtime
from fastpix.config import default_compile_cache_dir
from fastpix.files import atomic_write


def batch_pieces(threads: int) -> tuple[int, ...]:
    """The batch sizes a batch is cut into: powers of two up to one image per thread (at least 2, at most 8). One
    image per thread keeps every core busy in the inner layers (1×1 to 8×8 pixels); beyond that a bigger piece
    only adds a package to build and hold (~110 MB each at unet_256 bf16) and buffers too big for glibc to reuse.
    On two cores (unet_256 bf16, batch 8) pieces of 2 and one piece of 8 ran within noise of each other, the piece
    of 8 with ~24,500 page faults per call (docs/benchmarks.md, "CPU at real size: unet_256")."""
    top = min(8, max(2, 2 ** (max(threads, 1).bit_length() - 1)))
    return tuple(2 ** k for k in range(top.bit_length() - 1, -1, -1))


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
    return weights_key(network, type(network).__name__, norm_mode, precision, torch.__version__,
                       runtime.cpu_features())


class CompiledNetwork:
    """network(batch) with the compiled packages; batch and result are float32, the result channels-last.

    The packages already in the cache folder (up to max_batch_size images) are loaded now, each run once on zeros so
    that oneDNN creates its primitives here rather than in the first request (~0.1 s per package at unet_256)."""

    def __init__(self, network: nn.Module, norm_mode: str, precision: str, cache_dir: str | None = None,
                 max_batch_size: int | None = None, key: str | None = None):
        self.precision = precision
        self.key = key or cache_key(network, norm_mode, precision)  # key: the caller's cache_key, when it has one
        self.cache_dir = package_folder(self.key, cache_dir)
        self.net, self.dtype = prepared_network(network, precision)
        self.packages = {}  # (n, c, h, w) -> the loaded package
        self.pieces = batch_pieces(torch.get_num_threads())
        self.failed = None  # the reason compiling failed, once it has
        channels = next(m for m in self.net.modules() if isinstance(m, nn.Conv2d)).in_channels
        for n, h, w in cached_shapes(self.cache_dir):
            if max_batch_size is None or n <= max_batch_size:
                self._run(torch.zeros(n, channels, h, w, dtype=self.dtype).contiguous(
                    memory_format=torch.channels_last))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.dtype).contiguous(memory_format=torch.channels_last)
        pieces, start = [], 0
        while start < x.shape[0]:
            size = next(b for b in self.pieces if b <= x.shape[0] - start)
            pieces.append(self._run(x[start:start + size].contiguous(memory_format=torch.channels_last)))
            start += size
        return (pieces[0] if len(pieces) == 1 else torch.cat(pieces)).float()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed is None:
            try:
                return self._package(tuple(x.shape))(x)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: say it once and run eagerly
                self.failed = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                warnings.warn(f"fastpix: compiling the generator failed ({self.failed}); running it eagerly",
                              RuntimeWarning, stacklevel=3)
        with torch.inference_mode():
            return self.net(x)

    def package_path(self, shape) -> str:
        return os.path.join(self.cache_dir, "x".join(str(d) for d in (shape[0], *shape[2:])) + ".pt2")

    def _package(self, shape):
        """The loaded package for this input shape: from memory, else from the cache folder, else built now (a
        package that no longer loads, say a truncated file, is built again once)."""
        if shape not in self.packages:
            path = self.package_path(shape)
            if os.path.exists(path):
                try:
                    self.packages[shape] = load_package(path)
                    return self.packages[shape]
                except Exception:  # noqa: BLE001 - unreadable: build it again below
                    os.unlink(path)
            build_package(self.net, torch.zeros(shape, dtype=self.dtype).contiguous(
                memory_format=torch.channels_last), path, self.cache_dir)
            self.packages[shape] = load_package(path)
        return self.packages[shape]


def prepared_network(network: nn.Module, precision: str):
    """(a channels-last copy of network in eval mode, with its weights cast to the precision's dtype, that dtype):
    what a package is built from. Pre-cast once, rather than autocast casting every weight per call."""
    dtype = runtime.PRECISIONS[precision]
    return copy.deepcopy(network).to(memory_format=torch.channels_last).eval().to(dtype), dtype


def package_folder(key: str, cache_dir: str | None = None) -> str:
    return os.path.join(cache_dir or default_compile_cache_dir(), key)


def cached_shapes(folder: str) -> list[tuple[int, int, int]]:
    """(n, h, w) of every package in folder (named <n>x<h>x<w>.pt2)."""
    shapes = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        stem, suffix = os.path.splitext(name)
        parts = stem.split("x")
        if suffix == ".pt2" and len(parts) == 3 and all(p.isdigit() for p in parts):
            shapes.append(tuple(int(p) for p in parts))
    return shapes


def has_packages(key: str, cache_dir: str | None = None) -> bool:
    return bool(cached_shapes(package_folder(key, cache_dir)))


def build_package(net: nn.Module, example: torch.Tensor, path: str, inductor_dir: str | None = None) -> str:
    """Export `net` on `example`'s shape, dtype and layout and compile it ahead of time with frozen weights into the
    AOTInductor package `path` (written whole, then renamed: fastpix.files.atomic_write, whose temporary keeps the
    .pt2 suffix the packager wants). inductor_dir: where inductor keeps its build files."""
    with torch.no_grad():
        exported = torch.export.export(net, (example,))

    def package(tmp: str):
        with inductor_build(inductor_dir or os.path.dirname(os.path.abspath(path))), torch.no_grad():  # freezing
            torch._inductor.aoti_compile_and_package(exported, package_path=tmp)

    atomic_write(path, package)
    return path


# AOTInductor's package loader class (torch 2.6 and later); load_package falls back to the public loader without it.
PACKAGE_LOADER = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)


def load_package(path: str):
    """The package as a function of one input tensor. Through the loader class where this torch has it, rather
    than torch._inductor.aoti_load_package, whose import of the compiler costs ~1.3 s against a ~0.1 s load."""
    try:
        loader = PACKAGE_LOADER(path, "model", False, 1, -1)
    except TypeError:  # no such class, or another signature: the public loader
        return torch._inductor.aoti_load_package(path)
    return lambda x: loader.boxed_run([x])[0]


class inductor_build:
    """While building: inductor's build files in `directory` (it reads the variable at each lookup), and freezing
    on in inductor's global config (the freezing pass reads it there; without it every conv would reorder its weights
    on each call, nearly twice as slow at unet_256 batch 1, bf16: docs/benchmarks.md, "CPU at real size: unet_256")."""

    def __init__(self, directory: str):
        self.directory = directory
        self.freezing = torch._inductor.config.patch(freezing=True)

    def __enter__(self):
        self.previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = self.directory
        self.freezing.__enter__()

    def __exit__(self, *exc):
        self.freezing.__exit__(*exc)
        if self.previous is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = self.previous
