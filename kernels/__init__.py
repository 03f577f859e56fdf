"""fastpix.kernels: fused Triton kernels, one file per fused operation (kernel, launcher, autograd.Function).

On a CUDA device the kernels are compiled; on the CPU they run only under Triton's interpreter, which reads
TRITON_INTERPRET when a kernel module is imported (so it must be set before that: tests/kernels/conftest.py and
`fastpix train --backend triton` on a CPU do it). The interpreter is for checking correctness, not for speed.
"""

import os

# Triton's own reading of the variable (knobs.env_bool), taken at import time like the @triton.jit decorators.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on", "y")


def require_launchable(t, op: str) -> None:
    """Raise a clear error when a kernel would be launched on a tensor Triton cannot reach."""
    if t.device.type != "cuda" and not INTERPRETED:
        raise ValueError(
            f"{op}: the Triton kernels need CUDA tensors, got one on {t.device}. On a CPU use "
            "backend='eager', or set TRITON_INTERPRET=1 before importing fastpix to run them in "
            "Triton's (slow) interpreter."
        )
