"""The Predictor's compiled CPU path: the inference network as inductor graphs with frozen weights, cached on disk.

What runs (runtime 'compiled'): a copy of the inference network (BatchNorm already folded for norm_mode running,
per-image statistics for instance: norm_modes.py) in channels-last, its weights pre-cast to bf16 when the precision
is bf16, compiled by torch.compile with inductor's freezing (weights become constants: oneDNN prepacks them and
fuses conv + bias + activation). One graph per (batch bucket, padded size): a batch is cut into pieces of 8, 4, 2
and 1 images, so at most four graphs per size are ever compiled and no image is computed twice. Cutting is exact
because the modes compiled here treat every image on its own (instance, running; dropout off).

Compiling costs seconds per graph, so inductor's compiled kernels are kept on disk, in <cache_dir>/<key>/, where
the key hashes the weights, the norm mode, the precision, torch's version and the CPU's features (inductor's own
key covers the code and shapes): another model, precision, torch or CPU never meets these files. A fresh process
still traces and lowers the network (~4 s at unet_256) but compiles no C++. Inductor's graph-level caches (FX graph,
AOTAutograd) stay off: in torch 2.13 a frozen graph loaded from them ran ~10x slower than the one compiled (75 ms
against 720-1330 ms at unet_256 batch 1, measured 2026-12-01), and they key frozen weights by shape only.

If compiling fails, the Predictor says why in one line and runs the network eagerly instead.
"""
from __future__ import annotations

import copy
import hashlib
import os
import warnings

import torch
import torch.nn as nn

from fastpix import runtime
from fastpix.config import COMPILE_PAYS_FROM_IMAGES
from fastpix.config import INFERENCE_RUNTIMES as RUNTIMES
from fastpix.config import default_compile_cache_dir

BATCH_PIECES = (8, 4, 2, 1)
# What runtime 'auto' takes on each device type where nothing rules the compiled path out. CUDA keeps its eager
# path (with CUDA graphs when asked).
AUTO = {"cpu": "compiled"}


def resolve_runtime(requested, device: torch.device, norm_mode: str, dropout: bool, images: int | None = None) -> str:
    """The runtime that runs: 'auto' compiles where that is exact and pays (images: how many the caller will
    translate, None for a long-lived caller such as the server); one asked for that cannot run says why."""
    requested = requested or "auto"
    if requested not in RUNTIMES:
        raise ValueError(f"runtime {requested!r} is not one of {', '.join(RUNTIMES)}")
    if requested == "eager":
        return requested
    blocker = ""
    if requested == "onnxruntime" and device.type != "cpu":
        blocker = f"the ONNX Runtime path runs on the CPU, not {device.type}"
    elif device.type != "cpu":
        blocker = f"the compiled runtime is for CPUs, not {device.type}"
    elif norm_mode == "batch" or dropout:
        blocker = ("norm_mode 'batch' and dropout tie images of a batch together or draw per-image noise, which "
                   "the compiled graphs do not do")
    if requested != "auto" and blocker:
        raise ValueError(f"runtime {requested!r}: {blocker}")
    if blocker or (requested == "auto" and images is not None and images < COMPILE_PAYS_FROM_IMAGES):
        return "eager"
    return (AUTO.get(device.type, "eager") if requested == "auto" else requested)


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
    """network(batch) with the compiled graphs; batch and result are float32, the result channels-last."""

    def __init__(self, network: nn.Module, norm_mode: str, precision: str, cache_dir: str | None = None):
        self.precision = precision
        self.key = cache_key(network, norm_mode, precision)
        self.cache_dir = os.path.join(cache_dir or default_compile_cache_dir(), self.key)
        net = copy.deepcopy(network).to(memory_format=torch.channels_last)
        self.dtype = runtime.PRECISIONS[precision]
        if precision != "fp32":
            net = net.to(self.dtype)  # pre-cast once, rather than autocast casting every weight per call
        self.net = net
        self.compiled = compile_network(net)
        self.failed = None  # the reason compiling failed, once it has

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.dtype).contiguous(memory_format=torch.channels_last)
        pieces, start = [], 0
        while start < x.shape[0]:
            size = next(b for b in BATCH_PIECES if b <= x.shape[0] - start)
            pieces.append(self._run(x[start:start + size]))
            start += size
        return (pieces[0] if len(pieces) == 1 else torch.cat(pieces)).float()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed is None:
            try:
                with inductor_cache(self.cache_dir), torch.inference_mode():  # freezing needs grad off
                    return self.compiled(x)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: say it once and run eagerly
                self.failed = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                warnings.warn(f"fastpix: compiling the generator failed ({self.failed}); running it eagerly",
                              RuntimeWarning, stacklevel=3)
        return self.net(x)


def compile_network(net: nn.Module):
    # freezing: weights as constants (oneDNN prepacking, conv+bias+activation fusion); dynamic=False: one graph
    # per shape, which is what the batch pieces and the padded sizes give.
    # Four batch pieces per padded size soon pass dynamo's default of 8 graphs per forward, after which it would
    # quietly run the new shapes eagerly.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(net, dynamic=False, options={"fx_graph_cache": False})


class inductor_cache:
    """Point inductor's on-disk caches at `directory` while compiling (it reads the variable at each lookup), with
    the graph-level caches off (see the module docstring: a graph with frozen weights loaded from them runs ~10x
    slower in torch 2.13); the compiled kernels' cache stays on."""

    def __init__(self, directory: str):
        self.directory = directory
        self.autograd_cache = torch._functorch.config.patch(enable_autograd_cache=False)
        # Freezing must be on in inductor's global config while it compiles: torch.compile(options={"freezing":
        # True}) is not seen by the pass that decides to freeze (torch 2.13), which then leaves every conv to
        # reorder its weights on each call (30.9 against 18.0 ms at unet_256 batch 1, bf16, measured 2026-12-01).
        self.freezing = torch._inductor.config.patch(freezing=True)

    def __enter__(self):
        self.previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = self.directory
        self.autograd_cache.__enter__()
        self.freezing.__enter__()

    def __exit__(self, *exc):
        self.freezing.__exit__(*exc)
        self.autograd_cache.__exit__(*exc)
        if self.previous is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = self.previous
