"""The Predictor's CUDA graphs: its network captured for one padded size, one graph per batch bucket.

A request is padded up to the next bucket with spare rows; the rows are independent (checked by the Predictor), so
the spare rows' content does not matter. If a capture fails, the runner warns once, naming the cause (`failure`),
and that bucket runs the eager forward, with the same results.
"""
from __future__ import annotations

import torch

GRAPH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class GraphRunner:
    """CUDA graphs of the predictor's network for one padded size, one per batch bucket, captured on first use.

    A request is padded up to the next bucket with spare rows; the rows are independent (checked by Predictor), so
    the spare rows' content does not matter. If a capture fails, the runner warns once, naming the cause
    (`failure`), and that bucket runs the eager forward, with the same results.
    """

    def __init__(self, predictor, size: tuple[int, int]):
        self.predictor = predictor
        self.size = size
        self.graphs = {}
        self.failure = None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        n = batch.shape[0]
        bucket = next(b for b in GRAPH_BUCKETS if b >= n)
        captured = self.capture(bucket)
        if captured is None:
            with self.predictor.autocast():
                return self.predictor.network(batch).float()
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
        import warnings

        try:
            return self._record(bucket)
        except Exception as exc:  # noqa: BLE001 - whatever broke the capture, the eager forward still holds
            if self.failure is None:
                warnings.warn(f"fastpix: capturing the Predictor's CUDA graph failed ({type(exc).__name__}: {exc}); "
                              "it runs without CUDA graphs", RuntimeWarning, stacklevel=4)
            self.failure = f"{type(exc).__name__}: {exc}"[:300]
            return None

    def _record(self, bucket: int):
        from fastpix.models import tune_layers

        p = self.predictor
        static_in = torch.zeros(bucket, p.input_nc, *self.size, device=p.device).contiguous(
            memory_format=torch.channels_last)
        with p.autocast():  # backend 'triton': each layer's choice (Triton or cuDNN) made now, outside the capture
            tune_layers(p.network, static_in)
        # Warm-up on a side stream, as CUDA graph capture requires: cuDNN picks its algorithms outside the capture.
        stream = torch.cuda.Stream(p.device)
        stream.wait_stream(torch.cuda.current_stream(p.device))
        with torch.cuda.stream(stream), p.autocast():
            for _ in range(2):
                p.network(static_in)
        torch.cuda.current_stream(p.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), p.autocast():
            static_out = p.network(static_in).float()
        return static_in, static_out, graph
