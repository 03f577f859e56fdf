"""Peak RSS of one Predictor forward pass of a SIDE x SIDE image: the per-padded-pixel cost behind the server's
memory bound (docs/benchmarks.md, "Server memory"). Run each size in its own process:

    OMP_NUM_THREADS=1 python bench/serve_memory.py 1024
"""

import resource
import sys
import time

import numpy as np
import torch

from fastpix.infer.predictor import Predictor
from fastpix.models import define_G


def main(side: int, netG: str = "unet_256", ngf: int = 64):
    torch.set_num_threads(1)
    predictor = Predictor(define_G(3, 3, ngf, netG, "batch", True, backend="eager"), device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    predictor(image, output_type="np")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grown = peak - base
    print(
        f"{netG} ngf {ngf} {side}x{side}: model and runtime {base / 1024:.0f} MiB, forward +{grown / 1024:.0f} MiB "
        f"({grown * 1024 / side**2:.0f} B per padded pixel), {seconds:.1f} s"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]))
