"""Measured choices for the fused convs of one model, owned by that model (`ConvTuning`):

- block sizes: per kernel and problem (shapes, dtype, fusion flags) the fastest of a few candidate configs;
- cuDNN fallback: per layer (shapes, dtype, how its inputs are read and what its epilogue does) whether the fused
  Triton block or eager cuDNN conv + BatchNorm + activation runs its forward + backward faster; backend='triton'
  uses the faster one, so it is never slower than eager on any layer.

Measurements run only inside `ConvTuning.measuring()`: the model's explicit tuning step (fastpix.models.tune_layers,
before a run's first iteration), never inside a forward, where a choice not yet measured takes the default (Triton,
first config). Nothing is measured without a timer (the default timer exists on a CUDA device only: under Triton's
interpreter there is nothing to compare against, and the tests must exercise the kernels), nor while a CUDA graph
is being captured. A layer whose Triton kernels failed to compile or launch runs on cuDNN from then on
(`record_failure`, with one warning naming the layer and the error).

What was measured goes to a `timings` store shared by every model on the machine (get/put of {kind: {key: value}}):
`MemoryTimings` here; fastpix.models.tuning keeps them in a file, so that each is measured once per device.
FASTPIX_CONV_AUTOTUNE=0 keeps the default block sizes.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import warnings
from collections.abc import Callable

import torch
import triton

from fastpix.kernels import INTERPRETED


class MemoryTimings:
    """A timings store that lives as long as the process: {kind: {key: value}}."""

    def __init__(self):
        self._data: dict = {}

    def get(self, kind: str, key: str):
        return self._data.get(kind, {}).get(key)

    def put(self, kind: str, key: str, value):
        self._data.setdefault(kind, {})[key] = value


def autotune_enabled() -> bool:
    """FASTPIX_CONV_AUTOTUNE=0 skips block-size tuning (each config is a compilation: the GPU tests, which run
    many distinct small problems once, switch it off); the per-layer cuDNN choice is not affected."""
    return os.environ.get("FASTPIX_CONV_AUTOTUNE", "1") not in ("", "0")


def median_seconds(fn) -> float:
    """Median time of fn() on the GPU (triton.testing.do_bench, warm-up included)."""
    return triton.testing.do_bench(fn, return_mode="median") / 1000.0


def default_timer():
    """The timer of a device where measurements mean something: CUDA's (median_seconds); None elsewhere."""
    return median_seconds if torch.cuda.is_available() and not INTERPRETED else None


class ConvTuning:
    """The per-layer choices (Triton or cuDNN), kernel failures and block sizes of one model's fused convs.

    timings: where measurements are cached (shared between models; default: this process only). timer: seconds of
    a zero-argument callable (`default_timer()` on a GPU), or None: nothing is measured, every layer runs Triton
    with the first block config. force: a function of the layer key returning 'triton' or 'cudnn' that decides
    every layer instead of measurements (tests exercise the fallback on a CPU with it).
    """

    def __init__(self, timings=None, timer: Callable | None = None, force: Callable | None = None):
        self.timings = MemoryTimings() if timings is None else timings
        self.timer = timer
        self.force = force
        self.failures: dict[str, str] = {}  # layer key -> "<error type>: <message>" of its failed Triton kernels
        self._measuring = False
        self._made: dict | None = None  # inside measuring(): {layer key: choice label} of the layers run

    def __deepcopy__(self, memo):
        """A copied model (the Predictor's inference network) keeps what is known of this machine — the timings
        store, the timer, forced choices and failed layers — and makes its own choices."""
        twin = ConvTuning(self.timings, self.timer, self.force)
        twin.failures = copy.copy(self.failures)
        return twin

    @contextlib.contextmanager
    def measuring(self):
        """Within the block, choices and block sizes not yet cached are measured and cached. Yields the
        {layer key: choice label} of the layers run inside it (see `label`)."""
        previous = self._measuring, self._made
        self._measuring, self._made = True, {}
        try:
            yield self._made
        finally:
            self._measuring, self._made = previous

    def may_measure(self) -> bool:
        if not self._measuring or self.timer is None:
            return False
        return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())

    def record_failure(self, key: str, exc: BaseException) -> str:
        """Put layer `key` on cuDNN from now on after its Triton kernels raised `exc` (warned once per layer).
        Returns 'cudnn'."""
        if key not in self.failures:
            self.failures[key] = f"{type(exc).__name__}: {exc}"[:300]
            warnings.warn(
                f"fastpix: the Triton kernels failed for layer [{key}] ({self.failures[key]}); this layer "
                "runs on cuDNN/aten instead",
                RuntimeWarning,
                stacklevel=3,
            )
        return "cudnn"

    def label(self, key: str, choice: str) -> str:
        """The choice as a run's logs record it: 'triton', 'cudnn', or 'cudnn (triton failed: <error>)'."""
        return f"cudnn (triton failed: {self.failures[key]})" if key in self.failures else choice

    def record(self, key: str, choice: str):
        """Note what layer `key` ran, for the `measuring()` block it ran in."""
        if self._made is not None:
            self._made[key] = self.label(key, choice)

    def layer_choice(self, key: str, measure_fused: Callable, measure_eager: Callable) -> str:
        """'triton' or 'cudnn' for one layer: the forced choice, cuDNN after a Triton failure, the cached choice,
        else (inside `measuring()`) both measured (forward + backward) and the faster kept, else 'triton'.
        measure_*: functions of the timer returning seconds."""
        if self.force is not None:
            return self.force(key)
        if key in self.failures:
            return "cudnn"
        if self.timer is None:
            return "triton"
        cached = self.timings.get("layer", key)
        if cached is not None:
            return cached["choice"]
        if not self.may_measure():
            return "triton"
        try:
            t_fused = measure_fused(self.timer)
        except Exception as exc:  # noqa: BLE001 - fails to compile or launch: cuDNN, and nothing cached
            return self.record_failure(key, exc)
        t_eager = measure_eager(self.timer)
        choice = "triton" if t_fused <= t_eager else "cudnn"
        self.timings.put("layer", key, {"choice": choice, "triton_ms": 1000 * t_fused, "cudnn_ms": 1000 * t_eager})
        return choice

    def layer_timings(self, key: str):
        """{'choice', 'triton_ms', 'cudnn_ms'} of a measured layer, or None."""
        return self.timings.get("layer", key)

    def block_config(self, kind: str, key: str, candidates: list[tuple], launch: Callable) -> tuple:
        """The fastest of `candidates` for `launch(config)` (cached per kind and key); the first candidate when
        nothing may be measured. A candidate that fails to compile (too many resources) is skipped."""
        cached = self.timings.get(kind, key)
        if cached is not None:
            return tuple(cached)
        timer = self.timer
        if timer is None or not self.may_measure() or not autotune_enabled() or len(candidates) == 1:
            return candidates[0]
        times = []
        for config in candidates:
            try:
                times.append(timer(functools.partial(launch, config)))
            except (triton.runtime.errors.OutOfResources, triton.CompilationError):
                times.append(math.inf)
        best = candidates[min(range(len(candidates)), key=times.__getitem__)]
        self.timings.put(kind, key, list(best))
        return best


def block_config(tuning: ConvTuning | None, kind: str, key: str, candidates: list[tuple], launch: Callable) -> tuple:
    """`tuning.block_config(...)`, or the first candidate for a launch that belongs to no model (tuning None)."""
    return candidates[0] if tuning is None else tuning.block_config(kind, key, candidates, launch)
