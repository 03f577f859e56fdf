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

import functools
import os
import secrets
from collections import defaultdict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from fastpix.data.decode import DecodeError, decode_image
from fastpix.data.transforms import BICUBIC, to_image_array
from fastpix.files import atomic_write
from fastpix.infer.compiled import CompiledNetwork, cache_key, has_packages, resolve_runtime
from fastpix.infer.onnx_runtime import OnnxNetwork
from fastpix.infer.norm_modes import has_dropout, inference_network, sample_generator, seed_dropout
from fastpix.infer.requests import ImageRequest
from fastpix.models.resnet import ResnetGenerator
from fastpix.models.unet import UnetGenerator
from fastpix.runtime import PRECISIONS, autocast, channels_last, default_device, resolve_precision
from fastpix.store.architecture import infer_architecture  # noqa: F401 - public here too
from fastpix.store.generator import load_generator

OUTPUT_TYPES = ("pil", "np", "pt")
GRAPH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


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
    """An image as (CHW tensor, (h, w) before any resize): uint8 for images, arrays and paths (normalised to
    [-1, 1] on the device, by Predictor.run), float in [-1, 1] for float tensors. Files are read through the
    decoding facade (fastpix.data.decode): its DecodeError names the file."""
    mode = "L" if input_nc == 1 else "RGB"
    if isinstance(item, (str, os.PathLike)):
        item = decode_image(item, mode)
    if isinstance(item, torch.Tensor) and item.dtype == torch.uint8:
        if item.dim() != 3 or item.shape[0] != input_nc:
            raise ValueError(f"uint8 tensor images must be CHW with {input_nc} channels; got shape "
                             f"{tuple(item.shape)} (pass a batch as a list)")
        if resize is None:
            return item.detach(), tuple(item.shape[-2:])
        item = item.detach().cpu().permute(1, 2, 0).numpy()
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3):
            raise ValueError(f"numpy images must be HWC (or HW) uint8; got {item.dtype} of shape {item.shape}")
        channels = 1 if item.ndim == 2 else item.shape[2]
        if channels == input_nc and resize is None:  # already what the network takes: no PIL round trip
            hwc = np.ascontiguousarray(item).reshape(item.shape[0], item.shape[1], channels)
            if not hwc.flags.writeable:  # torch wants a writable array; nothing here writes to it, but copy anyway
                hwc = hwc.copy()
            return torch.from_numpy(hwc).permute(2, 0, 1), item.shape[:2]
        item = Image.fromarray(item[:, :, 0] if channels == 1 and item.ndim == 3 else item)
    if isinstance(item, Image.Image):
        original = (item.height, item.width)
        img = item.convert(mode)
        if resize is not None:
            img = img.resize(tuple(resize), BICUBIC)
        arr = np.asarray(img, dtype=np.uint8).reshape(img.height, img.width, input_nc)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), original
    if isinstance(item, torch.Tensor):
        if item.dim() != 3 or item.shape[0] != input_nc:
            raise ValueError(f"tensor images must be CHW with {input_nc} channels in [-1, 1]; got shape "
                             f"{tuple(item.shape)} (pass a batch as a list)")
        t = item.detach().float()
        original = tuple(t.shape[-2:])
        return (t if resize is None else _resize_tensor(t, resize[1], resize[0])), original
    raise TypeError(f"cannot read an image from {type(item).__name__}: give a PIL image, an HWC uint8 array, a CHW "
                    "tensor (uint8, or float in [-1, 1]) or a file path")


def to_network_input(t: torch.Tensor, device) -> torch.Tensor:
    """load_input's tensor on the device in [-1, 1]: uint8 crosses to the device as bytes and is normalised there,
    with to_tensor's operation order (x / 255 - 0.5) / 0.5, so the values equal the CPU chain's bit for bit."""
    t = t.to(device, non_blocking=True)
    if t.dtype == torch.uint8:
        return t.float().div_(255).sub_(0.5).div_(0.5)
    return t


def convert_output(t: torch.Tensor, output_type: str):
    if output_type == "pt":
        return t
    arr = to_image_array(t)
    return arr if output_type == "np" else Image.fromarray(arr)


# ---- the predictor ---------------------------------------------------------------------------------------------------

class Predictor:
    """Images in, images out. See the module docstring; `generator` is kept untouched, `network` is what runs.

    One thread at a time may call it (dropout seeds and CUDA graph buffers are per-predictor state); the server
    gives it to a single worker thread. runtime 'auto' compiles on a CPU (compiled.resolve_runtime) unless the
    caller says it will translate fewer `images` than compiling pays for (config.COMPILE_PAYS_FROM_IMAGES).
    """

    def __init__(self, generator: nn.Module, device=None, precision=None, norm_mode="instance", dropout=False,
                 graph_size=None, max_batch_size=16, *, runtime="auto", cache_dir=None, images=None):
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
        self.max_batch_size = max_batch_size
        self.runner = self._build_runner(runtime, cache_dir, images)
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
                        cache_dir=None, images=None, **arch):
        """A run folder (config.json + <epoch>_net_G.*), or a weights file (.safetensors / reference .pth); the
        architecture as load_generator finds it."""
        G = load_generator(path_or_dir, epoch, backend, **arch)
        return cls(G, device, precision, norm_mode, dropout, graph_size, max_batch_size, runtime=runtime,
                   cache_dir=cache_dir, images=images)

    def _build_runner(self, requested, cache_dir, images):
        """The compiled or ONNX Runtime network when that is the runtime (compiled.py), else None (eager). images:
        how many the caller will translate; runtime 'auto' does not compile for fewer than pay for it."""
        fused = getattr(self.generator, "backend", "eager") == "triton"
        if fused and requested not in (None, "auto", "eager"):
            raise ValueError(f"runtime {requested!r} runs backend 'eager' generators; this one is backend 'triton'")
        # The weights' hash (~0.15 s at unet_256), taken at most once: for the decision and for the packages.
        key = functools.cache(lambda: cache_key(self.network, self.norm_mode, self.precision))
        self.runtime = resolve_runtime("eager" if fused else requested, self.device, self.norm_mode, self.dropout,
                                       images, lambda: has_packages(key(), cache_dir))
        if self.runtime == "compiled":
            return CompiledNetwork(self.network, self.norm_mode, self.precision, cache_dir, self.max_batch_size,
                                   key())
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
            parts[-1] = "compiled (AOTInductor, frozen weights)"
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
                # The compiled runtime has one package per batch piece: build (or load) each one now.
                compiled = self.runtime == "compiled"
                pieces = [n for n in self.runner.pieces if n <= self.max_batch_size] if compiled else [1]
                for n in pieces:
                    self._forward(torch.zeros(n, self.input_nc, h, w, device=self.device), [(0, 0)] * n)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self

    def autocast(self):
        # No weight cache: it would hold casts made outside a CUDA graph capture.
        return autocast(self.device.type, self.precision, cache_enabled=False)

    def __call__(self, images, seed=None, output_type="pil", resize=None, indices=None):
        """One image or a list: PIL images, HWC uint8 arrays, CHW tensors (uint8, or float in [-1, 1]), or file paths.

        seed: dropout noise; image k of the call draws its masks from (seed, indices[k]) (indices default 0..n-1),
        so its output does not depend on the other images. A list gives each image its own seed and makes it a
        request of its own (indices then default to 0): a server batches independent requests this way (the typed
        form of that is run()). None picks a seed, kept in `last_seed`.
        resize=(w, h): inputs are resized (bicubic) to it, and outputs back to each input's size.
        output_type: 'pil' (RGB, grey tiled), 'np' (HWC uint8), 'pt' (CHW float32 in [-1, 1] on the device; the
        images of a batch that needed no padding share one storage).
        Under norm_mode 'batch' the statistics are those of each group of same-size images (at most
        max_batch_size of them).
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if indices is None:
            indices = [0] * len(items) if isinstance(seed, (list, tuple)) else list(range(len(items)))
        indices = list(indices)
        if len(indices) != len(items):
            raise ValueError(f"indices has {len(indices)} entries for {len(items)} images")
        last_seed = self._resolve_seed(seed, len(items)) if self.dropout else seed
        seeds = last_seed if isinstance(last_seed, list) else [last_seed] * len(items)
        outputs = self.run([ImageRequest(item, s, i) for item, s, i in zip(items, seeds, indices)], output_type,
                           resize)
        self.last_seed = last_seed
        return outputs[0] if single else outputs

    def run(self, requests: list[ImageRequest], output_type="np", resize=None) -> list:
        """The typed path: one output per ImageRequest, each from its own (seed, index) dropout noise (a seed of None
        is picked here, with dropout on; `last_seed` then lists the seeds used). resize and output_type as in
        __call__. Images of one padded size run together, at most max_batch_size per forward pass."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")
        seeds = [secrets.randbits(63) if self.dropout and r.seed is None else r.seed for r in requests]
        self.last_seed = seeds
        inputs = [load_input(r.image, self.input_nc, resize) for r in requests]
        groups = defaultdict(list)
        for k, (t, _) in enumerate(inputs):
            groups[padded_size(*t.shape[-2:], self.multiple)].append(k)
        outputs = [None] * len(requests)
        with torch.inference_mode():
            for size, members in groups.items():
                for start in range(0, len(members), self.max_batch_size):
                    chunk = members[start:start + self.max_batch_size]
                    batch = torch.stack([pad_to(to_network_input(inputs[k][0], self.device), size) for k in chunk])
                    result = self._forward(batch, [(seeds[k], requests[k].index) for k in chunk])
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
        return outputs

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
    the spare rows' content does not matter. If a capture fails, the runner warns once, naming the cause
    (`failure`), and that bucket runs the eager forward, with the same results.
    """

    def __init__(self, predictor: Predictor, size: tuple[int, int]):
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
    """<stem>.png per input name, none the same: every name that is unique keeps it; a name taken (a.jpg and a.png,
    or a third file whose own name is a_2.png) gets the first free _2, _3 … so that no result overwrites another."""
    wanted = [f"{os.path.splitext(os.fspath(name))[0]}.png" for name in names]
    first = {}
    for k, name in enumerate(wanted):
        first.setdefault(name, k)
    taken, out = set(wanted), []
    for k, name in enumerate(wanted):
        if first[name] != k:
            stem, n = name[:-len(".png")], 2
            while f"{stem}_{n}.png" in taken:
                n += 1
            name = f"{stem}_{n}.png"
            taken.add(name)
        out.append(name)
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
                    images.append(decode_image(inputs[k], "L" if predictor.input_nc == 1 else "RGB"))
                except DecodeError as exc:  # report it and go on; the caller names the file, so the message need not
                    failed.append((inputs[k], str(exc).removeprefix(f"{os.fsdecode(inputs[k])}: ")))
                    continue
                targets.append(os.path.join(output_dir, names[k]))
                indices.append(k)
            if images:
                outputs = predictor(images, seed=seed, output_type="pil", resize=resize, indices=indices)
                seed = predictor.last_seed  # one seed for the whole list, also when it was picked here
                for output, target in zip(outputs, targets):
                    atomic_write(target, lambda tmp, image=output: image.save(tmp, format="PNG"))
                    written.append(target)
            bar.update(min(batch_size, len(inputs) - start))
    return written, failed
