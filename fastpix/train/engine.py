"""The training engine: a Pix2PixStep on a device, channels-last, with the whole iteration in one CUDA graph.

Capture follows PyTorch's whole-network recipe: a few eager iterations on a side stream (they are real
training iterations, on real batches), then one capture of G forward, both D passes, the G step and both optimizer
steps; later iterations copy the batch into the static inputs and replay. Dropout draws fresh masks at every replay
(PyTorch's graph-safe Philox advances its offset per replay), the learning rate lives in a device tensor, and the
losses are summed on the device and read back only when the caller asks (no host synchronisation per iteration).
A batch of another shape (the last, smaller batch of an epoch) runs eagerly on the same optimizer state.
"""
from __future__ import annotations

import torch

from fastpix.runtime import channels_last
from fastpix.train.step import LOSS_NAMES, Pix2PixStep


class TrainEngine:
    def __init__(self, step: Pix2PixStep, device: torch.device, cuda_graphs: bool = False, warmup: int = 3):
        if cuda_graphs and device.type != "cuda":
            raise ValueError("--cuda_graphs needs a CUDA device")
        if cuda_graphs and not step.graph_safe:
            raise ValueError("CUDA graphs need a Pix2PixStep built with graph_safe=True")
        self.step, self.device, self.cuda_graphs, self.warmup = step, device, cuda_graphs, warmup
        self.channels_last = channels_last(device, step.precision)
        self.graph = None
        self.static_A = self.static_B = self.static_losses = None
        self.eager_iterations = 0
        self.loss_sum = torch.zeros(len(LOSS_NAMES), device=device)
        self.loss_count = 0

    @property
    def fake_B(self):
        return self.step.fake_B

    def _prepare(self, x):
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _eager(self, real_A, real_B):
        if not self.cuda_graphs:
            return self.step(real_A, real_B)
        side = torch.cuda.Stream(self.device)  # warm-up off the default stream, as capture requires
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            losses = self.step(real_A, real_B)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return losses

    def _capture(self, real_A, real_B):
        self.static_A, self.static_B = real_A.clone(), real_B.clone()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_losses = self.step(self.static_A, self.static_B)

    def __call__(self, real_A: torch.Tensor, real_B: torch.Tensor):
        real_A, real_B = self._prepare(real_A), self._prepare(real_B)
        graphable = self.cuda_graphs and (self.static_A is None or self.static_A.shape == real_A.shape)
        if not graphable or self.eager_iterations < self.warmup:
            losses = self._eager(real_A, real_B)
            self.eager_iterations += 1
        else:
            if self.graph is None:
                self._capture(real_A, real_B)  # capture records but does not run: replay below runs it
            self.static_A.copy_(real_A)
            self.static_B.copy_(real_B)
            self.graph.replay()
            losses = self.static_losses
        self.loss_sum += torch.stack([losses[k].float() for k in LOSS_NAMES])
        self.loss_count += 1

    def read_losses(self) -> dict:
        """Mean losses since the last read (one host synchronisation)."""
        means = (self.loss_sum / max(self.loss_count, 1)).tolist()
        self.loss_sum.zero_()
        self.loss_count = 0
        return dict(zip(LOSS_NAMES, means))
