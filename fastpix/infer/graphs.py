"""The Predictor's CUDA graphs: its network captured for one padded size, one graph per batch bucket.

A request is padded up to the next bucket with spare rows; the rows are independent (the plan runs graphs only for
norm_mode 'instance' or 'running' with dropout off: plan.py), so the spare rows' content does not matter. If a
capture fails, the runner warns once, naming the cause (`failure`), and that bucket runs the eager forward, with the
same results.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

GRAPH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class GraphRunner:
    """network(batch) through CUDA graphs for batches of `plan.graph_size`, each bucket captured on first use (or by
    Predictor.warmup); `plan` is the Predictor's ExecutionPlan (device, precision, autocast)."""

    def __init__(self, network: nn.Module, plan, input_nc: int):
        self.network, self.plan, self.input_nc = network, plan, input_nc
        self.size = plan.graph_size
        self.graphs: dict[int, tuple] = {}
        self.failure: str | None = None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        n = batch.shape[0]
        bucket = next(b for b in GRAPH_BUCKETS if b >= n)
        captured = self.capture(bucket)
        if captured is None:
            with self.plan.autocast():
                return self.network(batch).float()
        static_in, static_out, graph = captured
        static_in[:n].copy_(batch)
        graph.replay()
        return static_out[:n].clone(memory_format=torch.contiguous_format)  # out of the buffer the next replay reuses

    def capture(self, bucket: int):
        """(static input, static output, graph) of a bucket, captured on first use; None if its capture failed."""
        if bucket not in self.graphs:
            self.graphs[bucket] = self._capture(bucket)
        return self.graphs[bucket]

    def _capture(self, bucket: int):
        try:
            return self._record(bucket)
        except Exception as exc:  # noqa: BLE001 - whatever broke the capture, the eager forward still holds
            if self.failure is None:
                warnings.warn(
                    f"fastpix: capturing the Predictor's CUDA graph failed ({type(exc).__name__}: {exc}); "
                    "it runs without CUDA graphs",
                    RuntimeWarning,
                    stacklevel=4,
                )
            self.failure = f"{type(exc).__name__}: {exc}"[:300]
            return None

    def _record(self, bucket: int):
        from fastpix.models import tune_layers

        device = self.plan.device
        static_in = torch.zeros(bucket, self.input_nc, *self.size, device=device).contiguous(
            memory_format=torch.channels_last
        )
        # backend 'triton': each layer's choice (Triton or cuDNN) is made now, outside the capture.
        with self.plan.autocast():
            tune_layers(self.network, static_in)
        # Warm-up on a side stream, as CUDA graph capture requires: cuDNN picks its algorithms outside the capture.
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), self.plan.autocast():
            for _ in range(2):
                self.network(static_in)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), self.plan.autocast():
            static_out = self.network(static_in).float()
        return static_in, static_out, graph
