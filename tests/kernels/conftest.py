"""Kernel tests run on the CPU through Triton's interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton decorates the kernels, i.e. before any fastpix.kernels module is
imported, hence at the top of this file (pytest loads it before the test modules of this directory).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
