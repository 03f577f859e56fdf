"""Export of a checkpoint: the reference's plain .pth state dicts (for the reference's code), ONNX for runtimes
other than PyTorch (onnxruntime, TensorRT, OpenVINO …), or an AOTInductor package (.pt2) for serving with torch
alone on a CPU like this one.

pt2: the compiled runtime's artifact (infer/compiled.py) for one batch size, image size and precision, built for
this machine's CPU features: `torch._inductor.aoti_load_package(path)(x)` with x an N×C×H×W tensor of that
shape and dtype in channels-last memory (x.contiguous(memory_format=torch.channels_last)), in [-1, 1].

The exported graph is the eager network of the chosen norm mode (norm_modes.py) with dropout off: 'instance'
(per-image statistics with the BatchNorm affine: the paper's protocol at batch 1) or 'running' (BatchNorm folded
into the convs). Batch, height and width are dynamic; height and width must be multiples of the generator's
`multiple` (2**num_downs for a U-Net, 4 for a ResNet), which the model's metadata records: pad the input (the
Predictor reflect-pads and crops back) as for the PyTorch model. Input "image" and output "translated" are
N×C×H×W float32 in [-1, 1].

torch.onnx's dynamo exporter is used (the TorchScript one is deprecated); it needs the onnx and onnxscript packages
(pip install 'fastpix[onnx]').
"""

from __future__ import annotations

import os

import torch

from fastpix.config import EXPORT_NORM_MODES
from fastpix.errors import ConfigError
from fastpix.infer.compiled import prepared_network
from fastpix.infer.compiled_packages import build_package, load_package
from fastpix.infer.norm_modes import inference_network
from fastpix.infer.onnx_runtime import write_onnx
from fastpix.models.resnet import ResnetGenerator
from fastpix.models.unet import UnetGenerator
from fastpix.store.generator import GeneratorSource
from fastpix.store.run_folder import weights_in
from fastpix.store.weights import load_weights, save_weights


def export_pth(source: GeneratorSource, tag: str, out: str) -> list[str]:
    """The reference's plain state dicts in folder `out`: a weights file as <its name>.pth; from a run folder
    <tag>_net_G.pth and <tag>_net_D.pth (just G from a generator-only folder, as the reference's pretrained models
    are). Returns the files written."""
    os.makedirs(out, exist_ok=True)
    sources = {source.stem: source.weights}
    discriminator = None if source.given_file else weights_in(source.run_dir, tag).get("D")
    if discriminator is not None:
        sources[f"{tag}_net_D"] = discriminator
    written = []
    for stem, path in sources.items():
        written.append(os.path.join(out, f"{stem}.pth"))
        save_weights(written[-1], load_weights(path))
    return written


def size_multiple(generator) -> int:
    if isinstance(generator, UnetGenerator):
        return 2**generator.num_downs
    if isinstance(generator, ResnetGenerator):
        return 4
    raise TypeError(f"cannot export a {type(generator).__name__}: a UnetGenerator or ResnetGenerator is needed")


def export_onnx(generator: torch.nn.Module, path: str, norm_mode: str = "instance", metadata: dict | None = None):
    """Write `generator` (untouched; an inference copy is exported) to path as ONNX. Returns the exported network,
    the eager module the file is equivalent to."""
    if norm_mode not in EXPORT_NORM_MODES:
        raise ValueError(f"norm_mode {norm_mode!r} cannot be exported; choose one of {', '.join(EXPORT_NORM_MODES)}")
    multiple = size_multiple(generator)
    net = inference_network(generator, norm_mode, dropout=False).cpu().float()
    write_onnx(net, path, multiple, {"fastpix.norm_mode": norm_mode, **(metadata or {})})
    return net


def export_package(
    generator: torch.nn.Module, path: str, norm_mode: str, batch: int, size: tuple[int, int], precision: str
) -> float:
    """Write `generator`'s AOTInductor package for inputs (batch, C, *size) in `precision` to path; returns its
    relative (L2) difference from the eager fp32 network on a random batch."""
    if norm_mode not in EXPORT_NORM_MODES:
        raise ValueError(f"norm_mode {norm_mode!r} cannot be exported; choose one of {', '.join(EXPORT_NORM_MODES)}")
    multiple = size_multiple(generator)
    if size[0] % multiple or size[1] % multiple or min(size) < multiple:
        raise ConfigError(
            f"--image-size {size[0]}x{size[1]}: this generator takes sides that are multiples of {multiple}"
        )
    net = inference_network(generator, norm_mode, dropout=False).cpu().float().eval()
    compiled, dtype = prepared_network(net, precision)
    input_nc = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    x = torch.rand(batch, input_nc, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    example = x.to(dtype).contiguous(memory_format=torch.channels_last)
    build_package(compiled, example, path)
    got = load_package(path)(example)
    with torch.no_grad():
        want = net(x)
    return float((got.float() - want).norm() / want.norm())


def check_onnx(path: str, net: torch.nn.Module, sizes=((1, 1), (3, 2)), seed: int = 0) -> float:
    """Largest |onnxruntime − PyTorch| over random batches of the given (batch, size in multiples) shapes."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    multiple = int(session.get_modelmeta().custom_metadata_map["fastpix.multiple"])
    input_nc = session.get_inputs()[0].shape[1]
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n, k in sizes:
        x = torch.rand(n, input_nc, k * multiple, (k + 1) * multiple, generator=generator) * 2 - 1
        with torch.no_grad():
            expected = net(x)
        got = session.run(None, {"image": x.numpy()})[0]
        worst = max(worst, float((torch.from_numpy(got) - expected).abs().max()))
    return worst
