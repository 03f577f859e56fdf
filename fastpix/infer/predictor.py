"""Predictor: a generator checkpoint as a function from images to images, at any size, batched.

    from fastpix.infer.predictor import Predictor
    predict = Predictor.from_checkpoint("checkpoints/facades")     # a run folder, a .safetensors or a reference .pth
    photo = predict("label.png")                                   # PIL in, PIL out, same size as the input
    arrays = predict([img_a, img_b], seed=3, output_type="np")

Images are reflect-padded to the size the generator needs (a multiple of 2**num_downs for a U-Net, of 4 for a
ResNet), run, and cropped back. Padding is split evenly between the two sides; where it exceeds what one reflection
can give (pad >= side), several reflections are chained, and a side of 1 pixel is replicated instead.
Norm and dropout behaviour: see norm_modes.py (both backends: a backend='triton' generator keeps its fused kernels).
Outputs convert to uint8 as the reference saves them.
"""
from __future__ import annotations

import os
import secrets
from collections import defaultdict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from fastpix import checkpoint as ckpt
from fastpix.data.transforms import BICUBIC, to_image_array, to_tensor
from fastpix.infer.compiled import BATCH_PIECES, CompiledNetwork, resolve_runtime
from fastpix.infer.onnx_runtime import OnnxNetwork
from fastpix.infer.norm_modes import has_dropout, inference_network, sample_generator, seed_dropout
from fastpix.models import define_G
from fastpix.models.resnet import ResnetGenerator
from fastpix.models.unet import UnetGenerator
from fastpix.runtime import PRECISIONS, autocast, channels_last, default_device, resolve_precision

OUTPUT_TYPES = ("pil", "np", "pt")
ARCH_FIELDS = ("netG", "ngf", "norm", "input_nc", "output_nc", "no_dropout")
REQUIRED_ARCH = ("netG", "ngf", "norm", "input_nc", "output_nc")
GRAPH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


# ---- architecture of a bare weights file -----------------------------------------------------------------------------

def _unet_depth(state: dict) -> int:
    """num_downs: the deepest block, following 'model.model.1.model.' then 'model.3.model.' down the keys."""
    depth = 1
    for key in state:
        parts = key.split(".")[2:]
        level, i = 1, 0
        while i + 1 < len(parts) and parts[i] == ("1" if level == 1 else "3") and parts[i + 1] == "model":
            level, i = level + 1, i + 2
        depth = max(depth, level)
    return depth


def infer_architecture(state: dict) -> dict:
    """What the keys and shapes of a generator state_dict tell: netG, ngf, norm, input_nc, output_nc (those found),
    and no_dropout for a ResNet (a U-Net's Dropout leaves no trace in its keys)."""
    found = {}
    first = state.get("model.model.0.weight")
    resnet_first = state.get("model.1.weight")
    if first is not None and first.dim() == 4:
        found.update(ngf=first.shape[0], input_nc=first.shape[1], netG=f"unet_{2 ** _unet_depth(state)}")
        if "model.model.3.weight" in state:
            found["output_nc"] = state["model.model.3.weight"].shape[1]  # ConvTranspose2d: [in, out, k, k]
        first_bias = "model.model.0.bias"
    elif (resnet_first is not None and resnet_first.dim() == 4 and tuple(resnet_first.shape[-2:]) == (7, 7)
          and any(".conv_block." in k for k in state)):
        found.update(ngf=resnet_first.shape[0], input_nc=resnet_first.shape[1])
        n_blocks = len({k.split(".")[1] for k in state if ".conv_block." in k})
        if n_blocks in (6, 9):
            found["netG"] = f"resnet_{n_blocks}blocks"
        # A block's Dropout (no weights) shifts its second conv from index 5 to 6: here dropout does show.
        found["no_dropout"] = not any(k.endswith(".conv_block.6.weight") and state[k].dim() == 4 for k in state)
        top_convs = [k for k in state if k.count(".") == 2 and k.endswith(".weight") and state[k].dim() == 4]
        found["output_nc"] = state[max(top_convs, key=lambda k: int(k.split(".")[1]))].shape[0]
        first_bias = "model.1.bias"
    else:
        return found
    # The reference gives convs a bias only under InstanceNorm (conv_has_bias), and BatchNorm brings running stats.
    if any(k.endswith("running_mean") for k in state):
        found["norm"] = "batch"
    else:
        found["norm"] = "instance" if first_bias in state else "none"
    return found


def _locate(path_or_dir: str, epoch: str):
    """(weights file, the run's config.json model section or None)."""
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        weights, run_dir = ckpt.find_weights(path, epoch, "G"), path
    elif os.path.isfile(path):
        weights, run_dir = path, os.path.dirname(os.path.abspath(path))
    else:
        raise ckpt.CheckpointError(f"{path}: no such checkpoint file or run folder")
    config_path = os.path.join(run_dir, "config.json")
    config = ckpt.load_json(config_path).get("model") if os.path.isfile(config_path) else None
    return weights, config


def resolve_architecture(state: dict, config: dict | None, given: dict, source: str) -> dict:
    """config.json's model section (or what the keys tell), overridden by the keyword arguments."""
    unknown = sorted(set(given) - set(ARCH_FIELDS))
    if unknown:
        raise TypeError(f"unknown architecture arguments {unknown}; accepted: {', '.join(ARCH_FIELDS)}")
    values = {"no_dropout": False}  # the reference's pix2pix default; Dropout has no weights to tell
    values.update({k: v for k, v in (config or infer_architecture(state)).items() if k in ARCH_FIELDS})
    values.update({k: v for k, v in given.items() if v is not None})
    missing = [k for k in REQUIRED_ARCH if values.get(k) is None]
    if missing:
        raise ValueError(f"{source}: cannot infer {', '.join(missing)} from the checkpoint's keys and shapes; pass "
                         f"{', '.join(f'{k}=...' for k in missing)} (e.g. netG='unet_256', ngf=64, norm='batch', "
                         "input_nc=3, output_nc=3)")
    return values


def load_generator(path_or_dir, epoch: str = "latest", backend=None, **arch) -> nn.Module:
    """The generator of a run folder (config.json + <epoch>_net_G.*) or a weights file (.safetensors / reference
    .pth). Architecture: the run's config.json, else inferred from the keys and shapes; keyword arguments (netG,
    ngf, norm, input_nc, output_nc, no_dropout) override both."""
    weights, config = _locate(path_or_dir, epoch)
    state = ckpt.load_weights(weights)
    a = resolve_architecture(state, config, arch, weights)
    G = define_G(a["input_nc"], a["output_nc"], a["ngf"], a["netG"], a["norm"], not a["no_dropout"],
                 backend=backend)
    try:
        G.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ckpt.CheckpointError(f"{weights} does not fit netG={a['netG']} ngf={a['ngf']} norm={a['norm']} "
                                   f"input_nc={a['input_nc']} output_nc={a['output_nc']}: {exc}") from exc
    return G


# ---- padding and conversion ------------------------------------------------------------------------------------------

def padded_size(h: int, w: int, multiple: int) -> tuple[int, int]:
    return -(-h // multiple) * multiple, -(-w // multiple) * multiple


def _pad_offsets(h, w, size):
    return (size[0] - h) // 2, (size[1] - w) // 2


def pad_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Reflect-pad a (N)CHW tensor to size, centred; chained reflections for pads >= the side, replicate at side 1."""
    h, w = x.shape[-2:]
    top, left = _pad_offsets(h, w, size)
    bottom, right = size[0] - h - top, size[1] - w - left
    while left or right or top or bottom:
        h, w = x.shape[-2:]
        if (w == 1 and (left or right)) or (h == 1 and (top or bottom)):
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        step = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = left - step[0], right - step[1], top - step[2], bottom - step[3]
    return x


def crop_from(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    top, left = _pad_offsets(h, w, y.shape[-2:])
    return y[..., top:top + h, left:left + w]


def _resize_tensor(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if tuple(t.shape[-2:]) == (h, w):
        return t
    return F.interpolate(t[None], size=(h, w), mode="bicubic", align_corners=False, antialias=True)[0].clamp(-1, 1)


def load_input(item, input_nc: int, resize=None):
    """An image as (CHW float tensor in [-1, 1], (h, w) before any resize)."""
    if isinstance(item, (str, os.PathLike)):
        with Image.open(item) as opened:
            item = opened.convert("L" if input_nc == 1 else "RGB")
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3):
            raise ValueError(f"numpy images must be HWC (or HW) uint8; got {item.dtype} of shape {item.shape}")
        item = Image.fromarray(item[:, :, 0] if item.ndim == 3 and item.shape[2] == 1 else item)
    if isinstance(item, Image.Image):
        original = (item.height, item.width)
        img = item.convert("L" if input_nc == 1 else "RGB")
        if resize is not None:
            img = img.resize(tuple(resize), BICUBIC)
        return to_tensor(img), original
    if isinstance(item, torch.Tensor):
        if item.dim() != 3 or item.shape[0] != input_nc:
            raise ValueError(f"tensor images must be CHW with {input_nc} channels in [-1, 1]; got shape "
                             f"{tuple(item.shape)} (pass a batch as a list)")
        t = item.detach().float()
        original = tuple(t.shape[-2:])
        return (t if resize is None else _resize_tensor(t, resize[1], resize[0])), original
    raise TypeError(f"cannot read an image from {type(item).__name__}: give a PIL image, an HWC uint8 array, a CHW "
                    "tensor in [-1, 1] or a file path")


def convert_output(t: torch.Tensor, output_type: str):
    if output_type == "pt":
        return t
    arr = to_image_array(t)
    return arr if output_type == "np" else Image.fromarray(arr)


# ---- the predictor ---------------------------------------------------------------------------------------------------

class Predictor:
    """Images in, images out. See the module docstring; `generator` is kept untouched, `network` is what runs.

    One thread at a time may call it (dropout seeds and CUDA graph buffers are per-predictor state); the server
    gives it to a single worker thread.
    """

    def __init__(self, generator: nn.Module, device=None, precision=None, norm_mode="instance", dropout=False,
                 graph_size=None, max_batch_size=16, *, runtime="auto", cache_dir=None):
        self.device = default_device(device)
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.device.type != "cuda" and precision not in (None, "fp32", "bf16"):
            raise ValueError(f"precision {precision!r} needs a CUDA device; on {self.device} fp32 and bf16 are "
                             "supported")
        self.precision, self.requested_precision = resolve_precision(precision, self.device), precision
        if isinstance(generator, UnetGenerator):
            self.multiple = 2 ** generator.num_downs
        elif isinstance(generator, ResnetGenerator):
            self.multiple = 4
        else:
            raise TypeError(f"Predictor needs a UnetGenerator or ResnetGenerator, not {type(generator).__name__}")
        if getattr(generator, "backend", "eager") == "triton":
            from fastpix.kernels import INTERPRETED

            if self.device.type != "cuda" and not INTERPRETED:
                raise ValueError(f"backend 'triton' needs a CUDA device, not {self.device} (or TRITON_INTERPRET=1 set "
                                 "before importing fastpix, to run the kernels in Triton's slow interpreter); use "
                                 "backend 'eager' on a CPU")
        self.generator = generator
        self.input_nc = next(m for m in generator.modules() if isinstance(m, nn.Conv2d)).in_channels
        self.norm_mode = norm_mode
        self.network = inference_network(generator, norm_mode, dropout).to(self.device)
        self.dropout = has_dropout(self.network)
        self.channels_last = channels_last(self.device, self.precision)
        if self.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self.runner = self._build_runner(runtime, cache_dir)
        self.max_batch_size = max_batch_size
        self.last_seed = None
        self.graphs = None
        if graph_size is not None:
            if self.device.type != "cuda" or not torch.cuda.is_available():
                raise ValueError("graph_size: CUDA graphs need a CUDA device")
            if norm_mode == "batch" or self.dropout:
                raise ValueError("graph_size: CUDA graphs pad requests with spare images, which needs images that "
                                 "are independent of each other (norm_mode 'instance' or 'running', dropout off)")
            self.graphs = GraphRunner(self, padded_size(*graph_size, self.multiple))
            self.max_batch_size = min(max_batch_size, GRAPH_BUCKETS[-1])

    @classmethod
    def from_checkpoint(cls, path_or_dir, device=None, precision=None, norm_mode="instance", dropout=False,
                        backend=None, *, epoch="latest", graph_size=None, max_batch_size=16, runtime="auto",
                        cache_dir=None, **arch):
        """A run folder (config.json + <epoch>_net_G.*), or a weights file (.safetensors / reference .pth); the
        architecture as load_generator finds it."""
        G = load_generator(path_or_dir, epoch, backend, **arch)
        return cls(G, device, precision, norm_mode, dropout, graph_size, max_batch_size, runtime=runtime,
                   cache_dir=cache_dir)

    def _build_runner(self, requested, cache_dir):
        """The compiled or ONNX Runtime network when that is the runtime (compiled.py), else None (eager)."""
        fused = getattr(self.generator, "backend", "eager") == "triton"
        if fused and requested not in (None, "auto", "eager"):
            raise ValueError(f"runtime {requested!r} runs backend 'eager' generators; this one is backend 'triton'")
        self.runtime = resolve_runtime("eager" if fused else requested, self.device, self.norm_mode, self.dropout)
        if self.runtime == "compiled":
            return CompiledNetwork(self.network, self.norm_mode, self.precision, cache_dir)
        if self.runtime == "onnxruntime":
            if self.precision != "fp32" and self.requested_precision is not None:
                raise ValueError(f"runtime 'onnxruntime' runs fp32, not {self.precision}")
            self.precision = "fp32"
            return OnnxNetwork(self.network, self.norm_mode, cache_dir, self.multiple)
        return None

    @property
    def description(self) -> str:
        """What runs, in a few words: device, precision, runtime and layout (fastpix info, /readyz, the logs)."""
        parts = [str(self.device), self.precision, self.runtime]
        if self.runtime == "compiled":
            parts[-1] = "compiled (inductor, frozen weights)"
            if self.runner.failed:
                parts[-1] = f"eager (compiling failed: {self.runner.failed})"
        if self.graphs is not None:
            parts.append("CUDA graphs")
        parts.append("channels-last" if self.channels_last or self.runtime == "compiled" else "NCHW")
        parts.append(f"norm_mode {self.norm_mode}" + (", BatchNorm folded" if self.norm_mode == "running" else ""))
        return ", ".join(parts)

    def warmup(self, size: tuple[int, int] | None = None) -> "Predictor":
        """Run the network before the first request: with graph_size, capture the CUDA graph of every batch bucket
        up to max_batch_size; with the compiled runtime, every batch piece's graph at size (h, w); otherwise one
        eager batch of size (h, w), so that cuDNN / oneDNN choose their algorithms now rather than during a
        request."""
        with torch.inference_mode():
            if self.graphs is not None:
                last = next(b for b in GRAPH_BUCKETS if b >= self.max_batch_size)
                for bucket in GRAPH_BUCKETS[:GRAPH_BUCKETS.index(last) + 1]:
                    self.graphs.capture(bucket)
            else:
                h, w = padded_size(*(size or (self.multiple, self.multiple)), self.multiple)
                # The compiled runtime has one graph per batch piece: compile (or load) each one now.
                pieces = [n for n in BATCH_PIECES if n <= self.max_batch_size] if self.runtime == "compiled" else [1]
                for n in pieces:
                    self._forward(torch.zeros(n, self.input_nc, h, w, device=self.device), [(0, 0)] * n)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self

    def autocast(self):
        # No weight cache: it would hold casts made outside a CUDA graph capture.
        return autocast(self.device.type, self.precision, cache_enabled=False)

    def __call__(self, images, seed=None, output_type="pil", resize=None, indices=None):
        """One image or a list: PIL images, HWC uint8 arrays, CHW float tensors in [-1, 1], or file paths.

        seed: dropout noise; image k of the call draws its masks from (seed, indices[k]) (indices default 0..n-1),
        so its output does not depend on the other images. A list gives each image its own seed and makes it a
        request of its own (indices then default to 0): a server batches independent requests this way. None picks
        a seed, kept in `last_seed`.
        resize=(w, h): inputs are resized (bicubic) to it, and outputs back to each input's size.
        output_type: 'pil' (RGB, grey tiled), 'np' (HWC uint8), 'pt' (CHW float32 in [-1, 1] on the device; the
        images of a batch that needed no padding share one storage).
        Under norm_mode 'batch' the statistics are those of each group of same-size images (at most
        max_batch_size of them).
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if indices is None:
            indices = [0] * len(items) if isinstance(seed, (list, tuple)) else list(range(len(items)))
        indices = list(indices)
        if len(indices) != len(items):
            raise ValueError(f"indices has {len(indices)} entries for {len(items)} images")
        self.last_seed = self._resolve_seed(seed, len(items)) if self.dropout else seed
        seeds = self.last_seed if isinstance(self.last_seed, list) else [self.last_seed] * len(items)
        inputs = [load_input(item, self.input_nc, resize) for item in items]
        groups = defaultdict(list)
        for k, (t, _) in enumerate(inputs):
            groups[padded_size(*t.shape[-2:], self.multiple)].append(k)
        outputs = [None] * len(items)
        with torch.inference_mode():
            for size, members in groups.items():
                for start in range(0, len(members), self.max_batch_size):
                    chunk = members[start:start + self.max_batch_size]
                    batch = torch.stack([pad_to(inputs[k][0].to(self.device), size) for k in chunk])
                    result = self._forward(batch, [(seeds[k], indices[k]) for k in chunk])
                    # One NCHW conversion and one host transfer for the chunk, rather than one per image.
                    result = result.contiguous()
                    if output_type != "pt":
                        result = result.cpu()
                    for k, y in zip(chunk, result):
                        h, w = inputs[k][0].shape[-2:]
                        if (h, w) != size or inputs[k][1] != (h, w):
                            # A copy, not a view: a cropped image must not hold its whole batch alive.
                            y = _resize_tensor(crop_from(y, h, w), *inputs[k][1]).clone(
                                memory_format=torch.contiguous_format)
                        outputs[k] = convert_output(y, output_type)
        return outputs[0] if single else outputs

    @staticmethod
    def _resolve_seed(seed, n: int):
        if isinstance(seed, (list, tuple)):
            if len(seed) != n:
                raise ValueError(f"seed has {len(seed)} entries for {n} images")
            return [secrets.randbits(63) if s is None else int(s) for s in seed]
        return secrets.randbits(63) if seed is None else int(seed)

    def _forward(self, batch: torch.Tensor, noise: list[tuple[int, int]]) -> torch.Tensor:
        """One padded batch through the network; noise holds each row's (seed, index) for seeded dropout."""
        if self.runner is not None:
            return self.runner(batch)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if self.graphs is not None and tuple(batch.shape[-2:]) == self.graphs.size:
            return self.graphs(batch)
        if self.dropout:
            seed_dropout(self.network, [sample_generator(s, i, self.device) for s, i in noise])
        with self.autocast():
            return self.network(batch).float()


class GraphRunner:
    """CUDA graphs of the predictor's network for one padded size, one per batch bucket, captured on first use.

    A request is padded up to the next bucket with spare rows; the rows are independent (checked by Predictor), so
    the spare rows' content does not matter.
    """

    def __init__(self, predictor: Predictor, size: tuple[int, int]):
        self.predictor = predictor
        self.size = size
        self.graphs = {}

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        n = batch.shape[0]
        bucket = next(b for b in GRAPH_BUCKETS if b >= n)
        static_in, static_out, graph = self.capture(bucket)
        static_in[:n].copy_(batch)
        graph.replay()
        return static_out[:n].clone(memory_format=torch.contiguous_format)  # out of the buffer the next replay reuses

    def capture(self, bucket: int):
        """(static input, static output, graph) of a bucket, captured on first use."""
        if bucket not in self.graphs:
            self.graphs[bucket] = self._capture(bucket)
        return self.graphs[bucket]

    def _capture(self, bucket: int):
        p = self.predictor
        static_in = torch.zeros(bucket, p.input_nc, *self.size, device=p.device).contiguous(
            memory_format=torch.channels_last)
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


# ---- files -----------------------------------------------------------------------------------------------------------

def collect_inputs(items: list[str]) -> list[tuple[str, str]]:
    """(path, name relative to the output folder) for each file given, and for each image under each folder given
    (recursively, sorted; the sub-folders are kept in the name). A path that does not exist is kept, so that
    predict_files reports it with the unreadable files."""
    from fastpix.data.dataset import list_images

    found = []
    for item in map(os.fspath, items):
        if os.path.isdir(item):
            found += [(path, os.path.relpath(path, item)) for path in list_images(item)]
        else:
            found.append((item, os.path.basename(item)))
    return found


def _output_names(names: list[str]) -> list[str]:
    """<stem>.png per input name; a stem seen before gets _2, _3 … so that no result overwrites another."""
    seen, out = defaultdict(int), []
    for name in names:
        stem = os.path.splitext(os.fspath(name))[0]
        seen[stem] += 1
        out.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}_{seen[stem]}.png")
    return out


def predict_files(predictor: Predictor, inputs: list[str], output_dir: str, batch_size: int = 8,
                  progress: bool = True, seed=None, resize=None, names: list[str] | None = None):
    """Translate image files into output_dir/<name stem>.png (names default to the inputs' file names).
    Returns (written paths, [(path, message)] of failures).

    An unreadable file is reported and skipped. File k of `inputs` draws its dropout noise from (seed, k), so the
    results do not depend on batch_size.
    """
    from tqdm import tqdm

    os.makedirs(output_dir, exist_ok=True)
    names = _output_names([os.path.basename(os.fspath(p)) for p in inputs] if names is None else names)
    written, failed = [], []
    with tqdm(total=len(inputs), unit="img", disable=not progress) as bar:
        for start in range(0, len(inputs), batch_size):
            images, targets, indices = [], [], []
            for k in range(start, min(start + batch_size, len(inputs))):
                try:
                    with Image.open(inputs[k]) as opened:
                        images.append(opened.convert("L" if predictor.input_nc == 1 else "RGB"))
                except Exception as exc:  # noqa: BLE001 - any unreadable file: report it and go on
                    failed.append((inputs[k], f"{type(exc).__name__}: {exc}"))
                    continue
                targets.append(os.path.join(output_dir, names[k]))
                indices.append(k)
            if images:
                outputs = predictor(images, seed=seed, output_type="pil", resize=resize, indices=indices)
                seed = predictor.last_seed  # one seed for the whole list, also when it was picked here
                for output, target in zip(outputs, targets):
                    ckpt.atomic_write(target, lambda tmp, image=output: image.save(tmp, format="PNG"))
                    written.append(target)
            bar.update(min(batch_size, len(inputs) - start))
    return written, failed
