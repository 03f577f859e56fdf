"""Measured choices for the fused convs on this GPU, cached on disk so that each is measured once per device:

- block sizes: per kernel and problem (shapes, dtype, fusion flags) the fastest of a few candidate configs;
- cuDNN fallback: per layer (shapes, dtype, how its inputs are read and what its epilogue does) whether the fused
  Triton block or eager cuDNN conv + BatchNorm + activation runs its forward + backward faster; backend='triton'
  uses the faster one, so it is never slower than eager on any layer (`fastpix bench --layers` shows the choices).

The cache is one JSON file (FASTPIX_TUNING_CACHE, default $XDG_CACHE_HOME/fastpix/conv_tuning.json) with one
section per device name + torch + triton version: timings from another GPU or another compiler are not reused.
FASTPIX_CONV_AUTOTUNE=0 keeps the default block sizes.
Measurements run only inside `tuning()`: the explicit tuning step (fastpix.models.tune_layers, before a run's
first iteration; `fastpix bench --layers`), never inside a model's forward, where a choice not yet cached takes the
default (Triton, first config). Under Triton's interpreter nothing is measured: one small fixed config, and always
the Triton kernels (there is nothing to compare against, and the tests must exercise the kernels); nor while a
CUDA graph is being captured. A layer whose Triton kernels failed to compile or launch in this process runs on
cuDNN from then on (`record_failure`, with one warning naming the layer and the error).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import warnings

import torch
import triton

from fastpix.kernels import INTERPRETED


def cache_path() -> str:
    explicit = os.environ.get("FASTPIX_TUNING_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastpix", "conv_tuning.json")


def device_section() -> str:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return f"{name} | torch {torch.__version__} | triton {triton.__version__}"


class TuningCache:
    """{device section: {kind: {key: value}}} in a JSON file, re-read before each write (another process may have
    added entries) and replaced atomically."""

    def __init__(self, path=None):
        self._path = path
        self._data = None
        self._data_path = None

    @property
    def path(self):
        """The explicit path, else cache_path() as the environment says now."""
        return self._path or cache_path()

    def _read(self):
        try:
            with open(self.path) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):  # no cache yet, or a damaged one: measure again
            return {}

    def get(self, kind, key):
        if self._data is None or self._data_path != self.path:
            self._data, self._data_path = self._read(), self.path
        return self._data.get(device_section(), {}).get(kind, {}).get(key)

    def put(self, kind, key, value):
        data = self._read()
        data.setdefault(device_section(), {}).setdefault(kind, {})[key] = value
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
        self._data, self._data_path = data, self.path


CACHE = TuningCache()


_tuning = False
FAILURES = {}  # layer key -> "<error type>: <message>" of Triton kernels that failed for it in this process


@contextlib.contextmanager
def tuning():
    """Within the block, choices and block sizes not yet cached are measured and cached."""
    global _tuning
    previous, _tuning = _tuning, True
    try:
        yield
    finally:
        _tuning = previous


def _measuring_allowed() -> bool:
    return _tuning and not INTERPRETED and torch.cuda.is_available() and not torch.cuda.is_current_stream_capturing()


def record_failure(key: str, exc: BaseException) -> str:
    """Put layer `key` on cuDNN for the rest of the process after its Triton kernels raised `exc` (warned once per
    layer). Returns 'cudnn'."""
    if key not in FAILURES:
        FAILURES[key] = f"{type(exc).__name__}: {exc}"[:300]
        warnings.warn(f"fastpix: the Triton kernels failed for layer [{key}] ({FAILURES[key]}); this layer runs on "
                      "cuDNN/aten instead", RuntimeWarning, stacklevel=3)
    return "cudnn"


def choice_label(key: str, choice: str) -> str:
    """The choice as a run's logs record it: 'triton', 'cudnn', or 'cudnn (triton failed: <error>)'."""
    return f"cudnn (triton failed: {FAILURES[key]})" if key in FAILURES else choice


def autotune_enabled() -> bool:
    """FASTPIX_CONV_AUTOTUNE=0 skips block-size tuning (each config is a compilation: the GPU tests, which run
    many distinct small problems once, switch it off); the per-layer cuDNN choice is not affected."""
    return os.environ.get("FASTPIX_CONV_AUTOTUNE", "1") not in ("", "0")


def median_seconds(fn) -> float:
    """Median time of fn() on the GPU (triton.testing.do_bench, warm-up included)."""
    return triton.testing.do_bench(fn, return_mode="median") / 1000.0


def tuned_config(kind: str, key: str, candidates: list[tuple], launch) -> tuple:
    """The fastest of `candidates` for `launch(config)` (cached per kind and key); the first candidate when
    nothing may be measured. A candidate that fails to compile (too many resources) is skipped."""
    cached = CACHE.get(kind, key) if not INTERPRETED else None
    if cached is not None:
        return tuple(cached)
    if not _measuring_allowed() or not autotune_enabled() or len(candidates) == 1:
        return candidates[0]
    times = []
    for config in candidates:
        try:
            times.append(median_seconds(lambda: launch(config)))
        except (triton.runtime.errors.OutOfResources, triton.CompilationError):
            times.append(math.inf)
    best = candidates[min(range(len(candidates)), key=times.__getitem__)]
    CACHE.put(kind, key, list(best))
    return best


_forced_choice = None


@contextlib.contextmanager
def force_layer_choice(choose):
    """Within the block, `choose(key)` ('triton' or 'cudnn') decides every layer instead of measurements (tests
    exercise the fallback path on a CPU with it)."""
    global _forced_choice
    previous, _forced_choice = _forced_choice, choose
    try:
        yield
    finally:
        _forced_choice = previous


def layer_choice(key: str, measure_fused, measure_eager) -> str:
    """'triton' or 'cudnn' for one layer: cuDNN after a Triton failure, the cached choice, else (inside `tuning()`)
    both measured (forward + backward) and the faster kept, else 'triton'. measure_*: zero-argument callables
    returning a median time in seconds."""
    if _forced_choice is not None:
        return _forced_choice(key)
    if key in FAILURES:
        return "cudnn"
    if INTERPRETED or not torch.cuda.is_available():
        return "triton"
    cached = CACHE.get("layer", key)
    if cached is not None:
        return cached["choice"]
    if not _measuring_allowed():
        return "triton"
    try:
        t_fused = measure_fused()
    except Exception as exc:  # noqa: BLE001 - fails to compile or launch: cuDNN, and nothing cached on disk
        return record_failure(key, exc)
    t_eager = measure_eager()
    choice = "triton" if t_fused <= t_eager else "cudnn"
    CACHE.put("layer", key, {"choice": choice, "triton_ms": 1000 * t_fused, "cudnn_ms": 1000 * t_eager})
    return choice


def cached_layer_timings(key: str):
    """{'choice', 'triton_ms', 'cudnn_ms'} of a measured layer, or None."""
    return CACHE.get("layer", key)
