"""How a Predictor runs, decided once, where it is built: the ExecutionPlan.

plan_execution meets what the caller asked (device, precision, runtime, a CUDA graph size) with what the device and
the network allow, and returns one frozen value; the Predictor builds its runner from it and never changes it. A
combination asked for explicitly that cannot run is a ConfigError naming the flag and what works. What 'auto' or an
unset flag leaves open is chosen here: the precision (runtime.resolve_precision), the runtime (compiled on a CPU
where that is exact and pays, else eager), the layout (runtime.channels_last), and whether CUDA graphs run. A graph
size that cannot run as CUDA graphs (no CUDA device, norm_mode 'batch', dropout) runs without them, and the plan
says why (`graphs_off`): a server asks for its graph size on any device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastpix import runtime
from fastpix.config import COMPILE_PAYS_FROM_IMAGES
from fastpix.config import INFERENCE_RUNTIMES as RUNTIMES
from fastpix.errors import ConfigError
from fastpix.infer.graphs import GRAPH_BUCKETS
from fastpix.infer.images import padded_size

# What runtime 'auto' takes on each device type where nothing rules the compiled path out. CUDA keeps its eager
# path (with CUDA graphs when asked).
AUTO = {"cpu": "compiled"}


@dataclass(frozen=True)
class ExecutionPlan:
    """Everything about how the network runs, fixed when the Predictor is built."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16: the autocast dtype (eager), the weights' dtype (compiled)
    runtime: str  # eager | compiled | onnxruntime
    backend: str  # eager | triton: whether the network's layers run Triton kernels
    channels_last: bool  # the memory layout the network runs in
    graph_size: tuple[int, int] | None  # padded size whose batches run as CUDA graphs; None: no CUDA graphs
    graphs_off: str  # why a graph size asked for runs without CUDA graphs ("" when they run or none was asked)
    max_batch_size: int  # images per forward pass (with CUDA graphs, at most the largest bucket)

    @property
    def cuda_graphs(self) -> bool:
        return self.graph_size is not None

    def autocast(self):
        # No weight cache: it would hold casts made outside a CUDA graph capture.
        return runtime.autocast(self.device.type, self.precision, cache_enabled=False)


def plan_execution(
    *,
    device=None,
    precision=None,
    runtime_asked="auto",
    graph_size=None,
    max_batch_size=16,
    images=None,
    backend="eager",
    norm_mode="instance",
    dropout=False,
    multiple=1,
    packages_built: Callable[[str], bool] | None = None,
) -> ExecutionPlan:
    """The plan for a network and what the caller asked.

    backend, norm_mode, dropout: what the network's layers do; multiple: the side its inputs are padded to.
    images: how many the caller will translate (None: a long-lived caller such as the server).
    packages_built(precision): whether this network's compiled packages are on disk already (compiling then pays at
    once); asked only when runtime 'auto' weighs compiling.
    """
    device = runtime.default_device(device)
    chosen_precision = _precision(precision, device)
    if backend == "triton":
        _check_triton_device(device)
        if runtime_asked not in (None, "auto", "eager"):
            raise ConfigError(
                f"--runtime {runtime_asked!r} runs --backend eager generators; this one is --backend "
                "'triton' (use --runtime eager or auto)"
            )
        runtime_asked = "eager"
    cached = None if packages_built is None else (lambda: packages_built(chosen_precision))
    chosen = resolve_runtime(runtime_asked, device, norm_mode, dropout, images, cached)
    if chosen == "onnxruntime":
        if precision not in (None, "fp32"):
            raise ConfigError(
                f"--runtime 'onnxruntime' runs fp32, not {precision}: give --precision fp32 or leave it unset"
            )
        chosen_precision = "fp32"
    layout = {"compiled": True, "onnxruntime": False}.get(chosen, runtime.channels_last(device, chosen_precision))
    graphs_off = "" if graph_size is None else _graphs_blocker(device, norm_mode, dropout)
    graphed = graph_size is not None and not graphs_off
    return ExecutionPlan(
        device,
        chosen_precision,
        chosen,
        backend,
        layout,
        padded_size(graph_size[0], graph_size[1], multiple) if graphed else None,
        graphs_off,
        min(max_batch_size, GRAPH_BUCKETS[-1]) if graphed else max_batch_size,
    )


def _precision(asked, device: torch.device) -> str:
    if asked is not None and asked not in runtime.PRECISIONS:
        raise ConfigError(f"--precision {asked!r} is not one of {', '.join(runtime.PRECISIONS)}")
    if device.type != "cuda" and asked not in (None, "fp32", "bf16"):
        raise ConfigError(f"--precision {asked!r} needs a CUDA device; on {device} fp32 and bf16 are supported")
    return runtime.resolve_precision(asked, device)


def _check_triton_device(device: torch.device):
    from fastpix.kernels import INTERPRETED  # a triton network exists, so the kernels are loaded already

    if device.type != "cuda" and not INTERPRETED:
        raise ConfigError(
            f"--backend 'triton' needs a CUDA device, not {device} (or TRITON_INTERPRET=1 set before "
            "importing fastpix, to run the kernels in Triton's slow interpreter); use --backend eager "
            "on a CPU"
        )


def _graphs_blocker(device: torch.device, norm_mode: str, dropout: bool) -> str:
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"CUDA graphs need a CUDA device, not {device}"
    if norm_mode == "batch" or dropout:
        return (
            "CUDA graphs pad requests with spare images, which needs images that are independent of each other "
            "(norm_mode 'instance' or 'running', dropout off)"
        )
    return ""


def resolve_runtime(
    requested, device: torch.device, norm_mode: str, dropout: bool, images: int | None = None, cached=None
) -> str:
    """The runtime that runs: 'auto' compiles where that is exact and pays (images: how many the caller will
    translate, None for a long-lived caller such as the server; cached: a function saying whether this network's
    packages are already built, which makes compiling pay at once); one asked for that cannot run says why."""
    requested = requested or "auto"
    if requested not in RUNTIMES:
        raise ConfigError(f"--runtime {requested!r} is not one of {', '.join(RUNTIMES)}")
    if requested == "eager":
        return requested
    blocker = ""
    if requested == "onnxruntime" and device.type != "cpu":
        blocker = f"the ONNX Runtime path runs on the CPU, not {device.type}"
    elif device.type != "cpu":
        blocker = f"the compiled runtime is for CPUs, not {device.type}"
    elif norm_mode == "batch" or dropout:
        blocker = (
            "norm_mode 'batch' and dropout tie images of a batch together or draw per-image noise, which "
            "the compiled graphs do not do"
        )
    if requested != "auto" and blocker:
        raise ConfigError(f"--runtime {requested!r}: {blocker}; use --runtime eager or auto")
    if requested != "auto":
        return requested
    if blocker or AUTO.get(device.type, "eager") == "eager":
        return "eager"
    few = images is not None and images < COMPILE_PAYS_FROM_IMAGES
    return "eager" if few and not (cached is not None and cached()) else AUTO[device.type]
