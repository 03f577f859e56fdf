"""The Predictor's ONNX Runtime path (runtime 'onnxruntime', pip install 'fastpix[onnx]'), and the ONNX writer that
`fastpix export` shares.

The inference network (norm_mode instance or running, dropout off) is exported once, with dynamic batch, height and
width, to <cache_dir>/<key>.onnx (the key hashes the weights, the norm mode and torch's version: compiled.py), and
run by onnxruntime's CPU execution provider in fp32.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings

import numpy as np
import torch
import torch.nn as nn

from fastpix.cache_folders import Lease
from fastpix.config import default_compile_cache_dir
from fastpix.errors import MissingDependency
from fastpix.files import atomic_write
from fastpix.infer import compiled

OPSET = 18


def _require(*names: str):
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise MissingDependency(name, "onnx", "ONNX (--runtime onnxruntime, export --format onnx)") from exc


def write_onnx(net: nn.Module, path: str, multiple: int, metadata: dict | None = None):
    """Write the eager inference network `net` to path: input "image", output "translated", N×C×H×W float32, batch
    and size dynamic (H and W multiples of `multiple`, recorded in the metadata with the entries of `metadata`)."""
    _require("onnx", "onnxscript")
    import onnx

    input_nc = next(m for m in net.modules() if isinstance(m, nn.Conv2d)).in_channels
    # Example sizes above 1 on every dynamic axis: torch.export specialises axes of size 0 or 1.
    example = torch.zeros(2, input_nc, 2 * multiple, 2 * multiple)
    batch, height, width = torch.export.Dim("batch"), torch.export.Dim("h"), torch.export.Dim("w")
    dynamic = {"x": {0: batch, 2: multiple * height, 3: multiple * width}}

    def write(tmp: str):  # into a temporary that atomic_write renames over path: a reader never sees half a file
        # external_data=False: the weights inside the one file (a generator is far below ONNX's 2 GB limit); with
        # the exporter's default they went to a <tmp>.data beside it, left behind in the cache folder.
        with torch.no_grad(), exporter_quiet():
            torch.onnx.export(
                net,
                (example,),
                tmp,
                dynamo=True,
                input_names=["image"],
                output_names=["translated"],
                dynamic_shapes=dynamic,
                opset_version=OPSET,
                verbose=False,
                report=False,
                external_data=False,
            )
        model = onnx.load(tmp)
        for key, value in {"fastpix.multiple": multiple, **(metadata or {})}.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)
        onnx.save(model, tmp)

    atomic_write(path, write)


class _NoTorchvisionNotes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed")


@contextlib.contextmanager
def exporter_quiet():
    """Without the two messages torch's ONNX exporter prints on every export that say nothing to a user: one warning
    per torchvision operator when torchvision is not installed (a generator uses none), and a FutureWarning of
    torch's own pytree code about a class torch itself still uses."""
    notes, quiet = logging.getLogger("torch.onnx._internal.exporter._registration"), _NoTorchvisionNotes()
    notes.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
            yield
    finally:
        notes.removeFilter(quiet)


class OnnxNetwork:
    """network(batch) through onnxruntime: float32 NCHW in, float32 NCHW out (on the CPU)."""

    def __init__(self, network: nn.Module, norm_mode: str, cache_dir: str | None = None, multiple: int = 1):
        _require("onnxruntime")
        import onnxruntime

        # (torch's stub of Module.to lacks memory_format)
        net = copy.deepcopy(network).float().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        key = compiled.weights_key(net, type(net).__name__, norm_mode, "onnx", OPSET, torch.__version__)
        self.path = os.path.join(cache_dir or default_compile_cache_dir(), f"{key}.onnx")
        self.failed = None
        if not os.path.isfile(self.path):
            write_onnx(net, self.path, multiple, {"fastpix.norm_mode": norm_mode})
        self.lease = Lease(self.path)  # in use: no process's bound on the cache folder removes it (compiled_cache.py)
        self.session = onnxruntime.InferenceSession(self.path, providers=["CPUExecutionProvider"])

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(batch.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run(None, {"image": x})[0])
