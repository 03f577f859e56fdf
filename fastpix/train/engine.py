"""The training engine: a Pix2PixStep on a device, channels-last, with the whole iteration in one CUDA graph.

Capture follows PyTorch's whole-network recipe: a few eager iterations on a side stream (they are real
training iterations, on real batches), then one capture of G forward, both D passes, the G step and both optimizer
steps; later iterations copy the batch into the static inputs and replay. Dropout draws fresh masks at every replay
(PyTorch's graph-safe Philox advances its offset per replay), the learning rate lives in a device tensor, and the
losses are summed on the device and read back only when the caller asks (no host synchronisation per iteration).
A batch of another shape (the last, smaller batch of an epoch) runs eagerly on the same optimizer state.

Fail-safe: if the capture fails (an operation that cannot be captured, a kernel that fails inside it), the engine
warns once naming the cause and runs that and every later iteration eagerly: the same computation, on parameters
and optimizer state the failed capture did not touch (a capture records kernels without running them). Before the first
iteration, backend 'triton' networks get their per-layer choices (fastpix.models.tune_layers), and on a CPU in
mixed precision the convs over few pixels become matmuls (fastpix/models/small_convs.py). `report()` says
what ran: the graph's status and each layer's choice, for the run's logs.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from fastpix.config import SMALL_CONV_COLUMNS
from fastpix.errors import ConfigError
from fastpix.models import tune_layers
from fastpix.models.small_convs import plan_small_convs
from fastpix.runtime import channels_last
from fastpix.train.step import LOSS_NAMES, Pix2PixStep


class TrainEngine:
    def __init__(self, step: Pix2PixStep, device: torch.device, cuda_graphs: bool = False, warmup: int = 3):
        if cuda_graphs and device.type != "cuda":
            raise ConfigError("--cuda_graphs needs a CUDA device")
        if cuda_graphs and not step.graph_safe:
            raise ValueError("CUDA graphs need a Pix2PixStep built with graph_safe=True")
        self.step, self.device, self.cuda_graphs, self.warmup = step, device, cuda_graphs, warmup
        self.channels_last = channels_last(device, step.precision)
        # the captured iteration and the tensors it reads and writes (None until captured, and after a failure)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_A: torch.Tensor | None = None
        self.static_B: torch.Tensor | None = None
        self.static_losses: dict | None = None
        self.eager_iterations = 0
        self.graph_status = "captured on first use" if cuda_graphs else "off"
        # {network: {layer: choice}} once tuned, on CUDA (on a CPU nothing is measured: the Triton kernels run)
        self.layer_choices = None
        self._tuned = False
        self.loss_sum = torch.zeros(len(LOSS_NAMES), device=device)
        self.loss_count = 0

    @property
    def fake_B(self):
        return self.step.fake_B

    def _prepare(self, x):
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @contextlib.contextmanager
    def _side_stream(self):
        """Warm-up off the default stream, as capture requires."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _eager(self, real_A, real_B):
        if not self.cuda_graphs:
            return self.step(real_A, real_B)
        with self._side_stream():
            return self.step(real_A, real_B)

    def _tune(self, real_A, real_B):
        """backend 'triton': each layer's choice (Triton or cuDNN) measured now, at this batch's shape and
        precision, before anything is captured (the step changes no state)."""
        with self.step.autocast():
            self.layer_choices = {
                "G": tune_layers(self.step.G, real_A),
                "D": tune_layers(self.step.D, torch.cat([real_A, real_B], 1)),
            }

    def _plan_small_convs(self, real_A, real_B):
        """CPU, mixed precision, module path: the convs over few pixels at this batch's shape run as matmuls
        (models/small_convs.py); the fp32 path keeps the reference's convs and numbers."""
        G, D = (getattr(net, "module", net) for net in (self.step.G, self.step.D))  # DDP: the network it holds
        if hasattr(G, "_orig_mod") or hasattr(D, "_orig_mod"):
            return  # torch.compile'd (--backend compile): inductor lowers the convs its own way
        self.layer_choices = {
            "G": plan_small_convs(G, real_A, SMALL_CONV_COLUMNS),
            "D": plan_small_convs(D, torch.cat([real_A, real_B], 1), SMALL_CONV_COLUMNS),
        }

    def _capture(self, real_A, real_B) -> bool:
        """Capture the iteration; on failure warn once, naming the cause, and go eager for good (a capture records
        kernels without running them: the failed attempt changed no parameter or optimizer state)."""
        self.static_A, self.static_B = static_A, static_B = real_A.clone(), real_B.clone()
        try:
            self.graph = graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.static_losses = self.step(static_A, static_B)
        except Exception as exc:  # noqa: BLE001 - whatever broke the capture, the eager iteration still holds
            self.graph = self.static_A = self.static_B = self.static_losses = None
            self.cuda_graphs = False
            self.graph_status = f"failed, eager: {type(exc).__name__}: {exc}"[:300]
            warnings.warn(
                f"fastpix: capturing the training iteration in a CUDA graph failed ({type(exc).__name__}: "
                f"{exc}); training continues without CUDA graphs",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        self.graph_status = "captured"
        return True

    def _replay(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict:
        """The captured iteration on this batch (capture records but does not run: replay runs it)."""
        graph, static_A, static_B, losses = self.graph, self.static_A, self.static_B, self.static_losses
        assert graph is not None and static_A is not None and static_B is not None and losses is not None
        static_A.copy_(real_A)
        static_B.copy_(real_B)
        graph.replay()
        return losses

    def report(self) -> dict:
        """What this engine runs, for a run's metrics and logs: the CUDA graph's status and the per-layer
        choices of backend 'triton' networks."""
        return {"cuda_graph": self.graph_status, "layer_choices": self.layer_choices}

    def __call__(self, real_A: torch.Tensor, real_B: torch.Tensor):
        real_A, real_B = self._prepare(real_A), self._prepare(real_B)
        if not self._tuned:
            self._tuned = True
            if self.device.type == "cuda":
                self._tune(real_A, real_B)
            elif self.step.precision != "fp32" and self.step.backend == "eager":
                self._plan_small_convs(real_A, real_B)
        graphable = self.cuda_graphs and (self.static_A is None or self.static_A.shape == real_A.shape)
        if not graphable or self.eager_iterations < self.warmup:
            losses = self._eager(real_A, real_B)
            self.eager_iterations += 1
        elif self.graph is None and not self._capture(real_A, real_B):
            losses = self.step(real_A, real_B)  # capture records but does not run: this iteration runs eagerly
        else:
            losses = self._replay(real_A, real_B)
        self.loss_sum += torch.stack([losses[k].float() for k in LOSS_NAMES])
        self.loss_count += 1

    def read_losses(self) -> dict:
        """Mean losses since the last read (one host synchronisation)."""
        means = (self.loss_sum / max(self.loss_count, 1)).tolist()
        self.loss_sum.zero_()
        self.loss_count = 0
        return dict(zip(LOSS_NAMES, means))
