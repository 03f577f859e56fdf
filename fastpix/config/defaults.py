"""The defaults fastpix chose by measuring (cache bounds, when compiling pays, the CPU's small-conv threshold,
the draw page's canvas), and where its caches go."""

from __future__ import annotations

import os


def user_cache_dir() -> str:
    """fastpix's folder in the user's cache directory ($XDG_CACHE_HOME/fastpix, else ~/.cache/fastpix): the decode
    cache and the demo data go there, never into a data set."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastpix")


def default_compile_cache_dir() -> str:
    """InferenceConfig.compile_cache_dir's default."""
    return os.path.join(user_cache_dir(), "compiled")


# Runtime 'auto' builds compiled packages only for a caller that expects at least this many images (or does not
# say), or when this network's packages are built already (loading them costs ~0.1 s). Building one costs ~12 s at
# unet_256 256² batch 1 (once per machine: packages are cached on disk) and saves ~35 ms per image against eager
# (16 against ~54 ms; measured on a 2-core AVX-512 BF16 CPU, see docs/benchmarks.md, "CPU at real size: unet_256"):
# a first `fastpix predict` of a handful of files runs eagerly, one of a hundred pays for the build within the run,
# and every later run reuses it.
COMPILE_PAYS_FROM_IMAGES = 100
# The compiled cache's bound (--compile_cache_max_gb): about 35 packages at unet_256 bf16 (~110 MB each on disk),
# enough for a server's sizes and batch pieces of several checkpoints; least recently used packages go first.
COMPILE_CACHE_MAX_GB = 4.0
# Packages a process keeps loaded (--max_loaded_packages): each holds its own copy of the weights, ~220 MB resident
# at unet_256 bf16, so 8 bound them near 1.8 GB (four padded sizes at two batch pieces each, on two threads).
MAX_LOADED_PACKAGES = 8
# The decode cache's bound (--cache_max_gb): facades takes ~0.2 GB, maps ~0.5 GB, edges2shoes ~12 GB at load_size
# 286. A data set whose cache alone is larger is cached in memory only, or streamed.
PAIRS_CACHE_MAX_GB = 20.0
# CPU training (bf16): a conv whose matmul form has at most this many columns (batch × pixels on its small side) runs
# as that matmul (models/small_convs.py). Forward + backward at unet_256's shapes, measured on a 2-core AVX-512 BF16
# CPU (see docs/benchmarks.md, "CPU at real size: unet_256"): 2-4x faster up to 64 columns, about even at 256, slower
# beyond.
SMALL_CONV_COLUMNS = 128
# The draw page's canvas without a --canvas-size or a trained crop: the paper's crop, and Hesse's canvases.
DRAW_CANVAS_SIZE = 256
