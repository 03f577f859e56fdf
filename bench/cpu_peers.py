"""What a user would pick instead of fastpix on a CPU, built from the same weights, for bench/cpu_compare.py.

Inference (norm_mode running: eval-mode BatchNorm folded into the convs, the inference network fastpix exports):
- ONNX Runtime, fp32, CPU execution provider, on the ONNX file `fastpix export --format onnx` writes (dynamic
  batch and size), fed float32 NCHW arrays;
- OpenVINO on the same file, reshaped to the timed batch's static shape (what its docs advise for the CPU plugin),
  compiled with the LATENCY performance hint and an inference precision hint of f32 or bf16.
Both get the same thread count as torch (torch.get_num_threads()).

Training: torch.compile (inductor, default mode) of G and D inside fastpix's step (Pix2PixStep in a TrainEngine),
in fp32 NCHW (the reference's step, compiled) and in bf16 channels-last (fastpix's precision and layout).

A peer that is not installed is left out with one line saying how to get it.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch

from fastpix.infer import compiled
from fastpix.infer.onnx_runtime import OPSET, write_onnx

INSTALL = {"onnxruntime": "pip install 'fastpix[onnx]'", "openvino": "pip install openvino (or 'fastpix[bench]')"}


def missing(module: str) -> str | None:
    """The line that says how to get `module` when it is not installed, else None."""
    if importlib.util.find_spec(module) is None:
        return f"{module} not installed, its rows left out: {INSTALL[module]}"
    return None


def onnx_file(net: torch.nn.Module, folder: str, multiple: int) -> str:
    """The ONNX file of the eager inference network `net` in folder (written once per weights and torch)."""
    net = net.float().to(memory_format=torch.contiguous_format)
    key = compiled.weights_key(net, type(net).__name__, "onnx", OPSET, torch.__version__)
    path = os.path.join(folder, f"peer_{key}.onnx")
    if not os.path.isfile(path):
        write_onnx(net, path, multiple)
    return path


def onnxruntime_fp32(path: str, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"image": x})[0]


def openvino(path: str, shape: tuple, precision: str, threads: int):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    model.reshape({model.input(0): ov.PartialShape(list(shape))})
    net = core.compile_model(
        model,
        "CPU",
        {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(threads)},
    )
    request = net.create_infer_request()
    return lambda x: request.infer({0: x})[0]  # infer() returns copies: the caller owns its output


def inference_peers(net: torch.nn.Module, shape: tuple, folder: str, multiple: int) -> tuple[dict, dict, list]:
    """({row: fn(float32 NCHW array) -> array}, {row: precision}, [lines for the peers left out])."""
    threads = torch.get_num_threads()
    gone = {module: missing(module) for module in ("onnxruntime", "openvino")}
    peers, precisions, skipped = {}, {}, [line for line in gone.values() if line]
    if len(skipped) == len(gone):
        return peers, precisions, skipped
    path = onnx_file(net, folder, multiple)
    if not gone["onnxruntime"]:
        peers["p_onnxruntime_fp32"], precisions["p_onnxruntime_fp32"] = onnxruntime_fp32(path, threads), "fp32"
    if not gone["openvino"]:
        for precision, hint in (("fp32", "f32"), ("bf16", "bf16")):
            peers[f"p_openvino_{hint}"] = openvino(path, shape, hint, threads)
            precisions[f"p_openvino_{hint}"] = precision
    return peers, precisions, skipped


def as_array(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().float().numpy())


COMPILED_TRAIN = {"h_torch_compile_fp32_nchw": "fp32", "h_torch_compile_bf16_channels_last": "bf16"}


def compiled_networks(G: torch.nn.Module, D: torch.nn.Module):
    """G and D as torch.compile (inductor, default mode) wraps them; the step and engine see through the wrapper.

    Inductor draws dropout masks from eager's generator (fallback_random), so that the compiled G's first output
    can be compared with the reference's (the U-Net drops out in training): without it the accuracy column would
    measure two different masks (0.47 relative). It costs a few small draws per step (dropout acts at 2×2 to 8×8)."""
    torch._inductor.config.fallback_random = True
    return torch.compile(G), torch.compile(D)
