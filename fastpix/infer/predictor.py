"""Predictor: a generator checkpoint as a function from images to images, at any size, batched.

    from fastpix.infer.predictor import Predictor
    predict = Predictor.from_checkpoint("checkpoints/facades")     # a run folder, a .safetensors or a reference .pth
    photo = predict("label.png")                                   # PIL in, PIL out, same size as the input
    arrays = predict([img_a, img_b], seed=3, output_type="np")
    results = predict.run([ImageRequest(img_a, seed=3)])           # typed: each result names the seed it drew

How it runs (device, precision, runtime, layout, CUDA graphs) is decided once, when it is built: `plan`
(plan.py), and `description` says it in a few words. Images are padded to the generator's multiple and cropped back
(images.py). Norm and dropout behaviour: see norm_modes.py (both backends: a backend='triton' generator keeps its
fused kernels). Translating files into a folder: image_files.py. A colorization generator (model 'colorization')
takes colour or grey images and returns them coloured, their lightness kept (colorize.py).
"""

from __future__ import annotations

import contextlib
import functools
import secrets
from collections import defaultdict
from typing import Any, cast

import torch
import torch.nn as nn

from fastpix.config import COMPILE_CACHE_MAX_GB, MAX_LOADED_PACKAGES, model_kind
from fastpix.errors import ConfigError
from fastpix.infer.colorize import as_colour, join_lightness, split_lightness
from fastpix.infer.compiled import CompiledNetwork, cache_key
from fastpix.infer.compiled_cache import has_packages
from fastpix.infer.graphs import GRAPH_BUCKETS, GraphRunner
from fastpix.infer.images import (
    OUTPUT_TYPES,
    convert_output,
    crop_from,
    load_input,
    pad_to,
    padded_size,
    resize_tensor,
    to_network_input,
)
from fastpix.infer.norm_modes import has_dropout, inference_network, sample_generator, seeded_dropout, uses_triton
from fastpix.infer.onnx_runtime import OnnxNetwork
from fastpix.infer.plan import ExecutionPlan, plan_execution
from fastpix.infer.requests import ImageRequest, ImageResult
from fastpix.models.resnet import ResnetGenerator
from fastpix.models.unet import UnetGenerator
from fastpix.store.generator import locate_generator


class Predictor:
    """Images in, images out. See the module docstring; `generator` is kept untouched, `network` is what runs.

    One thread at a time may call it (CUDA graph buffers and the dropout layers' generators are per-predictor
    state); the server gives it to a single worker thread. runtime 'auto' compiles on a CPU (plan.resolve_runtime)
    unless the caller says it will translate fewer `images` than compiling pays for (config.COMPILE_PAYS_FROM_IMAGES).
    graph_size (h, w): run batches of that size (padded) as CUDA graphs where the device and the norm mode allow it;
    elsewhere the plan runs without them and `plan.graphs_off` says why.
    The compiled runtime never makes a call wait for the compiler: a size without its package runs eagerly while the
    package is built in the background (compiled.py); compile_status() says which sizes run compiled, warmup(size,
    wait=True) waits for a size's packages, close() stops the builds. cache_dir, cache_max_gb, max_loaded_packages:
    the compiled cache's folder, its bound, and how many packages stay loaded; source names the checkpoint in
    `fastpix cache list`.
    model: 'colorization' (colour or grey images in, coloured RGB out: colorize.py) or 'pix2pix' (images in the
    generator's own channels, in and out); None: colorization for a generator of 1 input and 2 output channels
    (the reference's L → ab), else pix2pix.
    """

    def __init__(
        self,
        generator: nn.Module,
        device=None,
        precision=None,
        norm_mode="instance",
        dropout=False,
        graph_size=None,
        max_batch_size=16,
        *,
        runtime="auto",
        cache_dir=None,
        images=None,
        cache_max_gb: float = COMPILE_CACHE_MAX_GB,
        max_loaded_packages: int = MAX_LOADED_PACKAGES,
        source: str | None = None,
        model=None,
    ):
        if isinstance(generator, UnetGenerator):
            self.multiple = 2**generator.num_downs
        elif isinstance(generator, ResnetGenerator):
            self.multiple = 4
        else:
            raise TypeError(f"Predictor needs a UnetGenerator or ResnetGenerator, not {type(generator).__name__}")
        self.generator = generator
        self.input_nc, output_nc = generator_channels(generator)
        self.model = model or model_kind({"input_nc": self.input_nc, "output_nc": output_nc})
        if self.model not in ("pix2pix", "colorization"):
            raise ConfigError(f"--model {self.model!r}: the Predictor runs pix2pix or colorization generators")
        if self.model == "colorization" and (self.input_nc, output_nc) != (1, 2):
            raise ConfigError(
                f"--model colorization needs a generator of 1 input and 2 output channels (L → ab); "
                f"this one has {self.input_nc} → {output_nc}"
            )
        self.colorization = self.model == "colorization"
        self.norm_mode = norm_mode
        network = inference_network(generator, norm_mode, dropout)
        self.dropout = has_dropout(network)
        # The weights' hash (~0.15 s at unet_256), taken at most once: for the plan's decision and for the packages.
        key = functools.cache(lambda precision: cache_key(network, norm_mode, precision))
        self.plan: ExecutionPlan = plan_execution(
            device=device,
            precision=precision,
            runtime_asked=runtime,
            graph_size=graph_size,
            max_batch_size=max_batch_size,
            images=images,
            backend="triton" if uses_triton(generator) else "eager",
            norm_mode=norm_mode,
            dropout=self.dropout,
            multiple=self.multiple,
            packages_built=lambda precision: has_packages(key(precision), cache_dir),
        )
        network = network.to(self.plan.device)
        if self.plan.channels_last:  # (torch's stub of Module.to lacks memory_format)
            network = network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.network = network
        # what runs a batch instead of the module: a CompiledNetwork (runtime compiled: packages, status(),
        # prepare(), wait()), an OnnxNetwork, or None (the module itself)
        self.runner: Any = None
        if self.plan.runtime == "compiled":
            self.runner = CompiledNetwork(
                self.network,
                norm_mode,
                self.plan.precision,
                cache_dir,
                self.plan.max_batch_size,
                key(self.plan.precision),
                max_loaded=max_loaded_packages,
                cache_max_gb=cache_max_gb,
                source=source,
            )
        elif self.plan.runtime == "onnxruntime":
            self.runner = OnnxNetwork(self.network, norm_mode, cache_dir, self.multiple)
        self.graphs = GraphRunner(self.network, self.plan, self.input_nc) if self.plan.cuda_graphs else None

    @classmethod
    def from_checkpoint(
        cls,
        path_or_dir,
        device=None,
        precision=None,
        norm_mode="instance",
        dropout=False,
        backend=None,
        *,
        epoch="latest",
        graph_size=None,
        max_batch_size=16,
        runtime="auto",
        cache_dir=None,
        images=None,
        cache_max_gb: float = COMPILE_CACHE_MAX_GB,
        max_loaded_packages: int = MAX_LOADED_PACKAGES,
        model=None,
        **arch,
    ):
        """A run folder (config.json + <epoch>_net_G.*), or a weights file (.safetensors / reference .pth); the
        architecture as load_generator finds it; the model kind given, else the one config.json records."""
        found = locate_generator(path_or_dir, tag=epoch)
        return cls(
            found.load(backend, **arch),
            device,
            precision,
            norm_mode,
            dropout,
            graph_size,
            max_batch_size,
            runtime=runtime,
            cache_dir=cache_dir,
            images=images,
            cache_max_gb=cache_max_gb,
            max_loaded_packages=max_loaded_packages,
            source=f"{path_or_dir} ({epoch})",
            model=model or found.config.get("model"),
        )

    # What the plan decided, for callers that ask the Predictor (read-only: the plan does not change).
    device = property(lambda self: self.plan.device)
    precision = property(lambda self: self.plan.precision)
    runtime = property(lambda self: self.plan.runtime)
    max_batch_size = property(lambda self: self.plan.max_batch_size)

    @property
    def image_channels(self) -> int:
        """Channels of the images it reads from files and bytes: 3 for colorization (grey images too: their L is
        what it uses), else the generator's input_nc."""
        return 3 if self.colorization else self.input_nc

    def autocast(self):
        """The autocast context `network` runs under (for code that runs it directly, as bench/gpu_check.py does)."""
        return self.plan.autocast()

    @property
    def description(self) -> str:
        """What runs, in a few words: device, precision, runtime, CUDA graphs and layout (fastpix info, /readyz,
        the logs)."""
        plan = self.plan
        runtime = plan.runtime
        if runtime == "compiled":
            runtime = f"compiled (AOTInductor, frozen weights: {compiled_sizes(self.runner.status())})"
        parts = [str(plan.device), plan.precision, runtime]
        if self.colorization:
            parts.insert(0, "colorization (L in, RGB out)")
        if plan.cuda_graphs and plan.graph_size is not None:  # (a graph size comes with CUDA graphs)
            parts.append(f"CUDA graphs at {plan.graph_size[0]}x{plan.graph_size[1]}")
        elif plan.graphs_off and plan.device.type == "cuda":
            parts.append(f"no CUDA graphs ({plan.graphs_off})")
        parts.append("channels-last" if plan.channels_last else "NCHW")
        parts.append(f"norm_mode {self.norm_mode}" + (", BatchNorm folded" if self.norm_mode == "running" else ""))
        return ", ".join(parts)

    def warmup(self, size: tuple[int, int] | None = None, wait: bool = False) -> Predictor:
        """Run the network before the first request: with CUDA graphs, capture the graph of every batch bucket up
        to max_batch_size; otherwise one batch of size (h, w), so that cuDNN / oneDNN choose their algorithms now
        rather than during a request. The compiled runtime also asks for the package of every batch piece at that
        size, built in the background; wait=True waits for them (else they run from the first call after they
        are ready)."""
        with torch.inference_mode():
            if self.graphs is not None:
                last = next(b for b in GRAPH_BUCKETS if b >= self.max_batch_size)
                for bucket in GRAPH_BUCKETS[: GRAPH_BUCKETS.index(last) + 1]:
                    self.graphs.capture(bucket)
            else:
                h, w = size or (self.multiple, self.multiple)
                h, w = padded_size(h, w, self.multiple)
                if self.runtime == "compiled":
                    self.runner.prepare((h, w), self.max_batch_size)
                self._forward(torch.zeros(1, self.input_nc, h, w, device=self.device), [(0, 0)])
        if self.runtime == "compiled" and wait:
            self.runner.wait()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self

    def compile_status(self) -> dict | None:
        """With the compiled runtime, {"compiled": [...], "building": [...], "failed": {...}} of the packages'
        <batch piece>x<h>x<w> shapes (other sizes run eagerly); None with another runtime."""
        return self.runner.status() if self.runtime == "compiled" else None

    def close(self):
        """Stop the compiled runtime's background builds (a later run does them) and unload its packages."""
        if self.runtime == "compiled":
            self.runner.close()

    def __call__(self, images, seed=None, output_type="pil", resize=None, indices=None, return_seeds=False):
        """One image or a list: PIL images, HWC uint8 arrays, CHW tensors (uint8, or float in [-1, 1]), or file paths.

        seed: dropout noise; image k of the call draws its masks from (seed, indices[k]) (indices default 0..n-1),
        so its output does not depend on the other images. A list gives each image its own seed and makes it a
        request of its own (indices then default to 0): a server batches independent requests this way (the typed
        form of that is run()). None picks a seed (dropout on).
        return_seeds: return (outputs, seed), seed being the argument that gives these outputs again (the one
        given, or the one picked; a list for a list).
        resize=(w, h): inputs are resized (bicubic) to it, and outputs back to each input's size.
        output_type: 'pil' (RGB, grey tiled), 'np' (HWC uint8), 'pt' (CHW float32 in [-1, 1] on the device; the
        images of a batch that needed no padding share one storage). Colorization: images may be colour or grey
        (1-channel tensors too), the output is RGB.
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
        seed = self._resolve_seed(seed, len(items)) if self.dropout else seed
        seeds = seed if isinstance(seed, list) else [seed] * len(items)
        results = self.run([ImageRequest(item, s, i) for item, s, i in zip(items, seeds, indices)], output_type, resize)
        outputs = results[0].image if single else [r.image for r in results]
        return (outputs, seed) if return_seeds else outputs

    def run(self, requests: list[ImageRequest], output_type="np", resize=None) -> list[ImageResult]:
        """The typed path: one ImageResult per ImageRequest, each from its own (seed, index) dropout noise (a seed
        of None is picked here, with dropout on, and named in the result). resize and output_type as in __call__.
        Images of one padded size run together, at most max_batch_size per forward pass."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")
        seeds = [secrets.randbits(63) if self.dropout and r.seed is None else r.seed for r in requests]
        inputs = [self._load(r.image, resize) for r in requests]
        groups = defaultdict(list)
        for k, (t, _, _) in enumerate(inputs):
            groups[padded_size(t.shape[-2], t.shape[-1], self.multiple)].append(k)
        outputs = [None] * len(requests)
        with torch.inference_mode():
            for size, members in groups.items():
                for start in range(0, len(members), self.max_batch_size):
                    chunk = members[start : start + self.max_batch_size]
                    batch = torch.stack([pad_to(to_network_input(inputs[k][0], self.device), size) for k in chunk])
                    result = self._forward(batch, [(seeds[k], requests[k].index) for k in chunk])
                    # One NCHW conversion and one host transfer for the chunk, rather than one per image.
                    result = result.contiguous()
                    if output_type != "pt" and not self.colorization:  # colorization joins L on the device first
                        result = result.cpu()
                    for k, y in zip(chunk, result):
                        h, w = inputs[k][0].shape[-2:]
                        if (h, w) != size or inputs[k][1] != (h, w):
                            # A copy, not a view: a cropped image must not hold its whole batch alive.
                            y = resize_tensor(crop_from(y, h, w), *inputs[k][1]).clone(
                                memory_format=torch.contiguous_format
                            )
                        if self.colorization:
                            y = join_lightness(inputs[k][2], y)
                            y = y if output_type == "pt" else y.cpu()
                        outputs[k] = convert_output(y, output_type)
        return [ImageResult(out, s, r.index) for out, s, r in zip(outputs, seeds, requests)]

    def _load(self, image, resize):
        """(the generator's input, CHW, (h, w) before any resize, the image's L at that size or None): uint8 or
        float as load_input gives it; colorization's L/50 − 1 (float, on the device), computed before the resize."""
        if not self.colorization:
            return (*load_input(image, self.input_nc, resize), None)
        rgb, original = load_input(as_colour(image), 3)
        L, x = split_lightness(rgb, self.device)
        return (x if resize is None else resize_tensor(x, resize[1], resize[0])), original, L

    @staticmethod
    def _resolve_seed(seed, n: int):
        if isinstance(seed, (list, tuple)):
            if len(seed) != n:
                raise ValueError(f"seed has {len(seed)} entries for {n} images")
            return [secrets.randbits(63) if s is None else int(s) for s in seed]
        return secrets.randbits(63) if seed is None else int(seed)

    def _forward(self, batch: torch.Tensor, noise: list[tuple[int | None, int]]) -> torch.Tensor:
        """One padded batch through the network; noise holds each row's (seed, index) for seeded dropout."""
        if self.runner is not None:
            return self.runner(batch)
        if self.plan.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if self.graphs is not None and tuple(batch.shape[-2:]) == self.graphs.size:
            return self.graphs(batch)
        drawing: contextlib.AbstractContextManager = contextlib.nullcontext()
        if self.dropout:  # with dropout on, run() gave every request a seed
            generators = [sample_generator(cast(int, s), i, self.device) for s, i in noise]
            drawing = seeded_dropout(self.network, generators)
        with drawing, self.plan.autocast():
            return self.network(batch).float()


def compiled_sizes(status: dict) -> str:
    """The compiled runtime's state in a few words, e.g. "2x256x256, 1x256x256 compiled; 1x320x256 building; other
    sizes eager until built"."""
    parts = [f"{', '.join(status['compiled'])} compiled" if status["compiled"] else "nothing compiled yet"]
    if status["building"]:
        parts.append(f"{', '.join(status['building'])} building")
    if status["failed"]:
        parts.append("; ".join(f"{shape} failed ({why})" for shape, why in status["failed"].items()))
    return "; ".join(parts + ["other sizes eager until built"])


def generator_channels(generator: nn.Module) -> tuple[int, int]:
    """(input, output) channels of a generator: its first convolution's input, its last one's output."""
    convs = [m for m in generator.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    return convs[0].in_channels, convs[-1].out_channels
