"""The per-layer choices of backend 'triton' (Triton or cuDNN, and the kernels' block sizes): where a model's
ConvTuning (kernels/conv_tuning.py) comes from, where its measurements are kept, and the explicit tuning step.

- `MachineTimings`: the measurements of this machine, one JSON file (FASTPIX_TUNING_CACHE, default
  $XDG_CACHE_HOME/fastpix/conv_tuning.json) with one section per device name + torch + triton version: timings
  from another GPU or another compiler are not reused. It is a cache of timings shared by every model, not a
  model's state; each model's choices, failures and "measuring allowed" switch live in its own ConvTuning.
- `conv_tuning()`: the ConvTuning a network gets when define_G / define_D build it for backend 'triton'.
- `tune_layers(net, example_input)`: the tuning step, before the first iteration (the engine, the Predictor's CUDA
  graph capture, `fastpix bench --layers`).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import torch

from fastpix.files import atomic_write_json

if TYPE_CHECKING:  # the kernels are imported when first used: TRITON_INTERPRET may be set until then
    from fastpix.kernels.conv_tuning import ConvTuning


def cache_path() -> str:
    explicit = os.environ.get("FASTPIX_TUNING_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastpix", "conv_tuning.json")


def device_section() -> str:
    import triton  # here, not at import: TRITON_INTERPRET may be set until Triton is first imported

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return f"{name} | torch {torch.__version__} | triton {triton.__version__}"


class MachineTimings:
    """{device section: {kind: {key: value}}} in a JSON file, re-read before each write (another process may have
    added entries) and replaced atomically. path: the file; None follows cache_path() as the environment says at
    each access."""

    def __init__(self, path: str | None = None):
        self._path = path
        self._data: dict | None = None
        self._data_path: str | None = None

    @property
    def path(self) -> str:
        return self._path or cache_path()

    def _read(self) -> dict:
        try:
            with open(self.path) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):  # no cache yet, or a damaged one: measure again
            return {}

    def get(self, kind: str, key: str):
        if self._data is None or self._data_path != self.path:
            self._data, self._data_path = self._read(), self.path
        return self._data.get(device_section(), {}).get(kind, {}).get(key)

    def put(self, kind: str, key: str, value):
        data = self._read()
        data.setdefault(device_section(), {}).setdefault(kind, {})[key] = value
        atomic_write_json(self.path, data, indent=1)
        self._data, self._data_path = data, self.path


def conv_tuning(force=None) -> ConvTuning:
    """A new network's ConvTuning: measured on a GPU (nothing to measure elsewhere), cached in MachineTimings.
    force: see ConvTuning (tests force every layer's choice with it)."""
    from fastpix.kernels.conv_tuning import ConvTuning, default_timer

    return ConvTuning(MachineTimings(), default_timer(), force)


def tune_layers(net: torch.nn.Module, example_input: torch.Tensor) -> dict:
    """The explicit tuning step of backend 'triton', before the first iteration: one forward (+ backward when `net`
    is training) on `example_input`, which has the iteration's shape, under the caller's autocast, with
    measurements allowed (the network's ConvTuning): each layer's choice (the fused Triton block or cuDNN, whichever
    runs its forward + backward faster on this GPU) and the kernels' block sizes are measured and cached now, never
    inside a later forward. A layer whose Triton kernels fail to compile or launch goes to cuDNN with a warning.
    Parameters, buffers (running statistics, dropout counters), gradients and torch's RNG are restored: the step
    changes no result. On a CPU (the interpreter) nothing is measured; the forward still checks every layer.

    Returns {layer key: 'triton' | 'cudnn' | 'cudnn (triton failed: ...)'} of the layers this forward ran; {} for a
    network on the module path."""
    net = getattr(net, "_orig_mod", net)  # torch.compile's wrapper (a DDP wrapper is not tuned: its backward syncs)
    forward = getattr(net, "fused_forward", None)
    if forward is None:
        return {}
    buffers = {name: b.detach().clone() for name, b in net.named_buffers()}
    seeded = {name: m._rng_seeded for name, m in net.named_modules() if hasattr(m, "_rng_seeded")}
    grads = {name: None if p.grad is None else p.grad.detach().clone() for name, p in net.named_parameters()}
    devices = [example_input.device] if example_input.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), forward.tuning.measuring() as made, torch.inference_mode(False):
            backward = net.training and torch.is_grad_enabled()
            with torch.set_grad_enabled(backward):
                out = net(example_input.clone())
            if backward and out.requires_grad:
                out.float().sum().backward()
    finally:
        with torch.no_grad():
            for name, b in net.named_buffers():
                b.copy_(buffers[name])
        for name, m in net.named_modules():
            if name in seeded:
                m._rng_seeded = seeded[name]
        for name, p in net.named_parameters():  # in place where a gradient existed: a CUDA graph may hold it
            grad = grads[name]
            if grad is None or p.grad is None:
                p.grad = grad
            else:
                p.grad.copy_(grad)
    return dict(made)
