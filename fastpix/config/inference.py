"""The configs of a trained generator's commands: predict, serve, export, and the caches of compiled packages."""

from __future__ import annotations

from dataclasses import dataclass

from fastpix.config.defaults import (
    COMPILE_CACHE_MAX_GB,
    COMPILE_PAYS_FROM_IMAGES,
    DRAW_CANVAS_SIZE,
    MAX_LOADED_PACKAGES,
)
from fastpix.config.fields import (
    EXPORT_NORM_MODES,
    INFERENCE_NORM_MODES,
    INFERENCE_RUNTIMES,
    MODEL_BACKENDS,
    NET_G_CHOICES,
    NORM_CHOICES,
    opt,
)
from fastpix.config.http import HttpServerConfig
from fastpix.config.run import TrainConfig


@dataclass
class InferenceConfig:
    """What `fastpix predict` and `fastpix serve` share: which generator, and how it runs."""

    checkpoint: str = opt(
        None, "a run folder (config.json + <epoch>_net_G.*), a .safetensors file or a reference .pth", required=True
    )
    epoch: str = opt("latest", "which checkpoint of a run folder: latest or an epoch number")
    norm_mode: str = opt(
        "instance",
        "BatchNorm at inference: instance (per-image statistics: the paper's protocol "
        "at batch 1, independent of the batch), batch (statistics of the whole batch), running "
        "(running statistics folded into the convs: fastest)",
        choices=INFERENCE_NORM_MODES,
    )
    dropout: bool = opt(False, "dropout on, as in the paper's test protocol (noise seeded per image)")
    device: str = opt(None, "torch device (default: cuda if available, else cpu)")
    precision: str = opt(
        None,
        "fp32, bf16 or fp16 (fp16: CUDA only) (default: bf16 on GPUs that support it and on "
        "CPUs with native bf16 (AVX-512 BF16, AMX), else fp32)",
        choices=("fp32", "bf16", "fp16"),
    )
    runtime: str = opt(
        "auto",
        "how the generator runs: eager (PyTorch module by module), compiled (CPU: "
        "AOTInductor packages with frozen weights, built once and cached on disk), onnxruntime (CPU, "
        "fp32; pip install 'fastpix[onnx]'); auto = compiled on a CPU for norm_mode instance/running "
        f"without dropout, except for a predict of fewer than {COMPILE_PAYS_FROM_IMAGES} images whose "
        "packages are not built yet (building would not pay for itself), else eager (default: auto)",
        choices=INFERENCE_RUNTIMES,
    )
    compile_cache_dir: str = opt(
        None,
        "where compiled generators and ONNX files are kept, one folder per weights, "
        "norm mode, precision, torch version and CPU (default: $XDG_CACHE_HOME/fastpix/"
        "compiled, else ~/.cache/fastpix/compiled)",
    )
    compile_cache_max_gb: float = opt(
        COMPILE_CACHE_MAX_GB,
        "bound on --compile_cache_dir: after each build the "
        "least recently used packages are removed until it fits, never one a running "
        "process has loaded (`fastpix cache list` shows what it holds)",
    )
    max_loaded_packages: int = opt(
        MAX_LOADED_PACKAGES,
        "compiled packages kept loaded at once, the least recently "
        "used dropped first (one per padded size and batch piece; each holds its own "
        "weights, ~220 MB resident at unet_256 bf16)",
    )
    backend: str = opt(
        None,
        "eager, or triton (the fused kernels; without CUDA they run in Triton's interpreter: "
        "slow, for checking) (default: eager)",
        choices=MODEL_BACKENDS,
    )
    netG: str = opt(
        None, "generator architecture, when neither config.json nor the weights tell it", choices=NET_G_CHOICES
    )
    ngf: int = opt(None, "generator filters, when neither config.json nor the weights tell it")
    norm: str = opt(
        None,
        "the checkpoint's normalisation layer, when neither config.json nor the weights tell it",
        choices=NORM_CHOICES,
    )
    input_nc: int = opt(None, "input channels, when neither config.json nor the weights tell it")
    output_nc: int = opt(None, "output channels, when neither config.json nor the weights tell it")
    model: str = opt(
        None,
        "colorization: take colour or grey images, colour them from their L (CIE Lab) and keep "
        "it; pix2pix: translate images as they are (default: config.json's, else colorization for a "
        "generator of 1 input and 2 output channels, else pix2pix)",
        choices=("pix2pix", "colorization"),
    )


@dataclass
class CacheConfig:
    """`fastpix cache list|clear`: the compiled packages and the decode caches on disk (both unless one is named)."""

    compiled: bool = opt(False, "the compiled generators (AOTInductor packages, ONNX files, failed builds)")
    pairs: bool = opt(False, "the decode caches of training data sets")
    compile_cache_dir: str = opt(
        None, "the compiled cache's folder (default: $XDG_CACHE_HOME/fastpix/compiled, else ~/.cache/fastpix/compiled)"
    )
    cache_dir: str = opt(
        None, "the decode caches' folder (default: $XDG_CACHE_HOME/fastpix/pairs, else ~/.cache/fastpix/pairs)"
    )


@dataclass
class PredictConfig(InferenceConfig):
    batch_size: int = opt(8, "images per forward pass (same-size images share a pass)")
    seed: int = opt(0, "dropout noise: file k of the run draws from (seed, k), whatever the batch size")


@dataclass
class ServeConfig(HttpServerConfig, InferenceConfig):
    max_batch_size: int = opt(16, "most requests one forward pass serves")
    max_wait_ms: float = opt(
        0.0,
        "after the first request of a batch, wait this long for more (0: a batch runs as "
        "soon as the worker is free; requests arriving meanwhile form the next one)",
    )
    max_queue: int = opt(256, "requests waiting beyond this many are refused with 503 and Retry-After")
    timeout_s: float = opt(30.0, "a request not answered within this many seconds of its body's arrival gets 504")
    max_bytes: int = opt(20 * 2**20, "largest request body accepted (bigger: 413)")
    max_pixels: int = opt(
        4096 * 4096,
        "largest image accepted, in pixels after padding to the generator's "
        "multiple (bigger: 413); also the most padded pixels one forward pass computes",
    )
    max_queue_pixels: int = opt(
        4 * 4096 * 4096,
        "padded pixels of the requests waiting, at most (beyond: 503 with "
        "Retry-After; an empty queue admits any one request)",
    )
    graph_size: int = opt(
        256,
        "CUDA only: images that pad to graph_size x graph_size run as CUDA graphs, one per "
        "batch bucket, captured before /readyz reports ready (0: no graphs)",
    )
    canvas_size: int = opt(
        None,
        "side in pixels of the draw page's canvas (GET /) (default: the crop size the "
        f"checkpoint was trained at, from its config.json, else {DRAW_CANVAS_SIZE})",
    )
    warmup_sizes: str = opt(
        None,
        "more image sizes to warm up at, WIDTHxHEIGHT comma-separated (e.g. 320x240,512x384): on a CPU their "
        "compiled packages start building at once (in the background), so that their first requests run compiled "
        "once built (default: the canvas size only)",
    )
    palette: str = opt(
        None,
        "the draw page's label colours: a palette file as eval's --label-palette takes, or a "
        "built-in one: facades, demo (default: none; a black pen on white, as edges models expect)",
    )
    examples: str = opt(
        None,
        "a split whose pairs the draw page's 'random example' button shows (input, and its "
        "real target beside the output): a folder of aligned A|B images, or one with A/ and B/",
    )
    direction: str = opt(
        None,
        "which half of an --examples pair is the model's input: AtoB or BtoA (default: the "
        "checkpoint's config.json, else AtoB)",
        choices=("AtoB", "BtoA"),
    )


@dataclass
class ExportConfig:
    format: str = opt(
        "pth",
        "output format: pth (reference state dicts), onnx, or pt2 (an AOTInductor package for "
        "this CPU: the compiled runtime's artifact)",
        choices=("pth", "onnx", "pt2"),
    )
    name: str = opt(None, "run name (required unless --checkpoint is given)")
    checkpoint: str = opt(None, "a run folder or a weights file, instead of --name")
    norm_mode: str = opt(
        "instance",
        "onnx: BatchNorm as per-image statistics (the paper's protocol at batch 1) or folded running statistics",
        choices=EXPORT_NORM_MODES,
    )
    checkpoints_dir: str = opt(TrainConfig.checkpoints_dir, "where the run is")
    epoch: str = opt("latest", "which checkpoint")
    out: str = opt(None, "folder to write into: <epoch>_net_{G,D}.pth, or the .onnx / .pt2 file", required=True)
    image_size: str = opt(
        "256x256",
        "pt2: the HxW (or one side) of the images the package takes (multiples of the "
        "generator's: pad others, as the Predictor does)",
    )
    batch_size: int = opt(1, "pt2: images per call")
    precision: str = opt(None, "pt2: fp32 or bf16 (default: bf16 where this CPU has it natively)")
