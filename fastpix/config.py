"""Every default of fastpix, in one place. The CLI, the API and the docs read these dataclasses.

Field names are the reference's option names (pytorch-CycleGAN-and-pix2pix), so that a reference user's flags map
one to one; the CLI also offers each with dashes. The `help` metadata is what `fastpix <cmd> --help` prints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from fastpix.errors import ConfigError


def opt(default, help, **kw):
    """A config field with its help text (and optional argparse extras: choices, flag aliases, nargs, required)."""
    return field(default=default, metadata={"help": help, **kw})


def user_cache_dir() -> str:
    """fastpix's folder in the user's cache directory ($XDG_CACHE_HOME/fastpix, else ~/.cache/fastpix): the decode
    cache and the demo data go there, never into a data set."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastpix")


# The smallest value each numeric flag takes (by field name, in every config that has it): below it a run would
# divide by zero or build an empty network, so argparse refuses it with the flag's name.
MINIMUM = {"input_nc": 1, "output_nc": 1, "ngf": 1, "ndf": 1, "n_layers_D": 1, "load_size": 1, "crop_size": 1,
           "max_dataset_size": 1, "num_threads": 0, "batch_size": 1, "n_epochs": 0, "n_epochs_decay": 0,
           "epoch_count": 1, "max_iters": 1, "lr": 0.0, "lr_decay_iters": 1, "nproc": 1, "save_epoch_freq": 1,
           "save_latest_freq": 1, "print_freq": 1, "display_freq": 1, "val_freq": 0, "val_images": 1,
           "num_test": 0, "load_iter": 0, "max_batch_size": 1, "max_queue": 1, "max_bytes": 1, "max_pixels": 1,
           "graph_size": 0, "port": 0, "timeout_s": 0.0, "max_wait_ms": 0.0, "header_timeout_s": 0.1,
           "body_timeout_s": 0.1, "keep_alive_s": 1, "limit_concurrency": 1, "canvas_size": 8, "aspect_ratio": 0.0,
           "size": 8, "train": 0, "val": 0, "test": 0, "epochs": 1, "retries": 0, "read_timeout_s": 1.0,
           "num_imgs": 1, "threshold": 0.0, "small_edge": 1, "cache_max_gb": 0.0, "compile_cache_max_gb": 0.0,
           "max_loaded_packages": 1}


NET_G_CHOICES = tuple(f"unet_{2 ** k}" for k in range(5, 10)) + ("resnet_6blocks", "resnet_9blocks")
NET_D_CHOICES = ("basic", "n_layers", "pixel")
NORM_CHOICES = ("batch", "instance", "none", "syncbatch")
INIT_CHOICES = ("normal", "xavier", "kaiming", "orthogonal")
MODEL_BACKENDS = ("eager", "triton")  # what define_G/define_D build (fastpix.models.BACKENDS)
TRAIN_BACKENDS = MODEL_BACKENDS + ("compile",)  # training also runs torch.compile of the eager modules
EXPORT_NORM_MODES = ("instance", "running")  # 'batch' mixes the images of a batch: not a model to ship
BENCH_SUITES = ("train", "kernels", "data", "infer")
PREPROCESS_CHOICES = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")
INFERENCE_NORM_MODES = ("instance", "batch", "running")
DATA_PIPELINE_CHOICES = ("auto", "cache", "stream", "loader")
INFERENCE_RUNTIMES = ("auto", "eager", "compiled", "onnxruntime")
# Runtime 'auto' builds compiled packages only for a caller that expects at least this many images (or does not
# say), or when this network's packages are built already (loading them costs ~0.1 s). Building one costs ~12 s at
# unet_256 256² batch 1 (once per machine: packages are cached on disk) and saves ~35 ms per image against eager
# (16 against ~54 ms; measured on a 2-core AVX-512 BF16 CPU, see docs/benchmarks.md, "CPU at real size: unet_256"):
# a first `fastpix predict` of a handful of files runs eagerly, one of a hundred pays for the build within the run,
# and every later run reuses it.
COMPILE_PAYS_FROM_IMAGES = 100
# The compiled cache's bound (--compile_cache_max_gb): about 35 packages at unet_256 bf16 (~110 MB each on disk),
# enough for a server's sizes and batch pieces of several checkpoints; least recently used packages go first.
COMPILE_CACHE_MAX_GB = 4.0
# Packages a process keeps loaded (--max_loaded_packages): each holds its own copy of the weights, ~220 MB resident
# at unet_256 bf16, so 8 bound them near 1.8 GB (four padded sizes at two batch pieces each, on two threads).
MAX_LOADED_PACKAGES = 8
# The decode cache's bound (--cache_max_gb): facades takes ~0.2 GB, maps ~0.5 GB, edges2shoes ~12 GB at load_size
# 286. A data set whose cache alone is larger is cached in memory only, or streamed.
PAIRS_CACHE_MAX_GB = 20.0
# CPU training (bf16): a conv whose matmul form has at most this many columns (batch × pixels on its small side) runs
# as that matmul (models/small_convs.py). Forward + backward at unet_256's shapes, measured on a 2-core AVX-512 BF16
# CPU (see docs/benchmarks.md, "CPU at real size: unet_256"): 2-4x faster up to 64 columns, about even at 256, slower
# beyond.
SMALL_CONV_COLUMNS = 128


MODEL_CHOICES = ("pix2pix", "colorization", "test")
DATASET_MODES = ("aligned", "colorization", "single")


@dataclass
class ModelConfig:
    model: str = opt("pix2pix", "pix2pix; colorization: the reference's grey → colour model, pix2pix from the L of CIE "
                     "Lab to its ab (implies --dataset_mode colorization, --input_nc 1, --output_nc 2); test: the "
                     "reference's single-image generator run, which is `fastpix predict`", choices=MODEL_CHOICES)
    input_nc: int = opt(3, "channels of the input image A (1 = grayscale)")
    output_nc: int = opt(3, "channels of the output image B (1 = grayscale)")
    ngf: int = opt(64, "generator filters in the last conv layer")
    ndf: int = opt(64, "discriminator filters in the first conv layer")
    netG: str = opt("unet_256", "generator architecture", choices=NET_G_CHOICES)
    netD: str = opt("basic", "discriminator architecture (basic = 70x70 PatchGAN)", choices=NET_D_CHOICES)
    n_layers_D: int = opt(3, "discriminator conv layers when --netD n_layers")
    norm: str = opt("batch", "normalisation layer (syncbatch: BatchNorm synchronised across GPUs)",
                    choices=NORM_CHOICES)
    init_type: str = opt("normal", "weight initialisation", choices=INIT_CHOICES)
    init_gain: float = opt(0.02, "scale of the weight initialisation")
    no_dropout: bool = opt(False, "no dropout in the generator (pix2pix uses dropout 0.5 as its noise)")
    backend: str = opt(None, "eager, triton (fused norm+activation kernels and losses; on a CPU through Triton's "
                       "slow interpreter) or compile (torch.compile of eager; training only) (default: eager)",
                       choices=TRAIN_BACKENDS)


@dataclass
class DataConfig:
    dataroot: str = opt(None, "dataset folder holding train/val/test splits (default: the built-in demo data)")
    dataset_mode: str = opt("aligned", "aligned: A|B files side by side, or A/ and B/ folders; colorization: single "
                            "RGB images, A their L and B their ab (implies --model colorization); single: images "
                            "without targets, which is `fastpix predict`", choices=DATASET_MODES)
    direction: str = opt("AtoB", "translate A to B or B to A", choices=("AtoB", "BtoA"))
    load_size: int = opt(286, "scale images to this size before cropping")
    crop_size: int = opt(256, "then crop to this size")
    preprocess: str = opt("resize_and_crop", "scaling and cropping at load time", choices=PREPROCESS_CHOICES)
    no_flip: bool = opt(False, "do not flip images horizontally for augmentation")
    max_dataset_size: int = opt(None, "use at most this many images of the split")
    num_threads: int = opt(2, "data loading workers: decode threads (cache, stream) or DataLoader processes "
                           "(loader)")
    skip_bad_images: bool = opt(False, "warn about and skip unreadable images instead of stopping")
    data_pipeline: str = opt("auto", "how training reads pairs: cache (decode and resize each pair once, then "
                             "crop/flip/normalize batched on the device), stream (decode threads into a bounded "
                             "ring of pinned buffers, for data sets too big to cache), loader (the reference's "
                             "per-item DataLoader); auto = cache if it fits on the GPU, in RAM or on disk, else "
                             "stream, and loader when --preprocess is not resize_and_crop",
                             choices=DATA_PIPELINE_CHOICES)
    cache_dir: str = opt(None, "folder of the decode-once cache (default: a folder per data set under "
                         "$XDG_CACHE_HOME/fastpix/pairs, else ~/.cache/fastpix/pairs)")
    cache_max_gb: float = opt(PAIRS_CACHE_MAX_GB, "bound on the decode caches on disk (all data sets under the "
                              "default folder, or --cache_dir's): after a build, the least recently used data sets' "
                              "caches are removed until they fit, never one a run is using; a data set whose cache "
                              "alone is larger is cached in memory or streamed")


def check_crop(model_cfg: ModelConfig, data_cfg: DataConfig):
    """A U-Net halves its input num_downs times (unet_<N>: log2 N), so a fixed crop must be a multiple of N:
    otherwise the first forward fails, after the cache was built. Said first, in one line."""
    if not model_cfg.netG.startswith("unet_") or data_cfg.preprocess not in ("resize_and_crop", "crop"):
        return
    multiple = int(model_cfg.netG.removeprefix("unet_"))
    if data_cfg.crop_size % multiple:
        raise ConfigError(f"--netG {model_cfg.netG} takes images whose sides are multiples of {multiple}: "
                          f"--crop_size {data_cfg.crop_size} is not (or use a smaller U-Net)")


# Colorization's model and data set (each implies the other, as in the reference) and what they need: the
# reference's colorization data set sets, and asserts, input_nc 1, output_nc 2, AtoB.
COLORIZATION = {"model": "colorization", "dataset_mode": "colorization"}
COLORIZATION_NEEDS = {"input_nc": 1, "output_nc": 2, "direction": "AtoB"}


def model_kind(*layers: dict) -> str:
    """"colorization" or "pix2pix", from layers of option values (the later override the earlier, as build_config
    takes them; dataclasses as vars()): colorization when --model or --dataset_mode says so; where no layer names
    either, when the generator takes 1 channel and gives 2 (L → ab: a reference colorization .pth tells nothing
    else), as no other data has 2-channel targets."""
    merged = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if v is not None})
    if "colorization" in (merged.get("model"), merged.get("dataset_mode")):
        return "colorization"
    if "model" in merged or "dataset_mode" in merged:
        return "pix2pix"
    return "colorization" if (merged.get("input_nc"), merged.get("output_nc")) == (1, 2) else "pix2pix"


def kind_layers(*layers: dict) -> tuple[dict, dict]:
    """(beneath, above): the layers the model kind of `layers` puts below them (colorization's channels and
    direction, which flags may still set, and check_model then refuses) and above them (its model and data set,
    both named, so that config.json records them); empty for pix2pix."""
    if model_kind(*layers) != "colorization":
        return {}, {}
    return {**COLORIZATION_NEEDS, **COLORIZATION}, dict(COLORIZATION)


def check_model(model_cfg: ModelConfig, data_cfg: DataConfig):
    """Colorization's options hold together (1 → 2 channels, AtoB), said in one line before any work; a model or
    data set that translates single images is `fastpix predict`'s."""
    if model_cfg.model == "test" or data_cfg.dataset_mode == "single":
        raise ConfigError("--model test / --dataset_mode single translate images without targets: use fastpix "
                          "predict")
    if model_kind(vars(model_cfg), vars(data_cfg)) != "colorization":
        if model_cfg.output_nc == 2:
            raise ConfigError("--output_nc 2: only colorization's targets (ab) have 2 channels; give --model "
                              "colorization, or --output_nc 1 or 3")
        return
    values = {**vars(model_cfg), **vars(data_cfg)}
    wrong = [f"--{k} {values[k]}" for k, v in COLORIZATION_NEEDS.items() if values[k] != v]
    if wrong:
        raise ConfigError(f"colorization translates L (1 channel) to ab (2 channels), AtoB: {', '.join(wrong)} do "
                          f"not fit (leave them out: it sets "
                          f"{' '.join(f'--{k} {v}' for k, v in COLORIZATION_NEEDS.items())})")


@dataclass
class TrainConfig:
    name: str = opt("experiment_name", "name of the experiment: checkpoints go to <checkpoints_dir>/<name>")
    checkpoints_dir: str = opt("./checkpoints", "where checkpoints are saved")
    phase: str = opt("train", "dataset split to train on (<dataroot>/<phase>)")
    batch_size: int = opt(1, "input batch size: the global batch, split across the processes of --nproc/torchrun")
    n_epochs: int = opt(100, "epochs at the initial learning rate", aliases=("--niter",))
    n_epochs_decay: int = opt(100, "epochs to decay the learning rate linearly to zero", aliases=("--niter_decay",))
    epoch_count: int = opt(1, "the starting epoch count")
    max_iters: int = opt(None, "stop after this many iterations in total (short runs)")
    lr: float = opt(0.0002, "initial learning rate for Adam")
    beta1: float = opt(0.5, "Adam momentum term beta1")
    lr_policy: str = opt("linear", "learning rate policy (plateau: the reference's ReduceLROnPlateau on pix2pix's "
                         "constant metric, x0.2 every 6 epochs after the first)",
                         choices=("linear", "step", "plateau", "cosine"))
    lr_decay_iters: int = opt(50, "multiply by 0.1 every lr_decay_iters epochs (--lr_policy step)")
    gan_mode: str = opt("vanilla", "GAN objective (vanilla = BCE on logits, lsgan = MSE, wgangp = the reference's "
                        "Wasserstein loss, no gradient penalty in pix2pix, none = L1 only: the paper's L1 baseline, "
                        "no discriminator)", choices=("vanilla", "lsgan", "wgangp", "none"))
    lambda_L1: float = opt(100.0, "weight of the L1 loss")
    seed: int = opt(0, "random seed: same seed and device give the same weights")
    device: str = opt(None, "torch device (default: cuda if available, else cpu)")
    precision: str = opt(None, "fp32, bf16 or fp16 (autocast; fp16 with a gradient scaler) (default: bf16 on GPUs "
                         "that support it and on CPUs with native bf16 (AVX-512 BF16, AMX; then channels-last too), "
                         "else fp32)", choices=("fp32", "bf16", "fp16"))
    tf32: bool = opt(False, "let fp32 convolutions and matmuls use TF32 tensor cores (faster, ~1e-3 relative "
                     "error); off by default so that --precision fp32 means fp32")
    cuda_graphs: bool = opt(None, "capture the whole iteration in a CUDA graph (default: on with CUDA, except "
                            "with --backend compile)")
    nproc: int = opt(None, "train on this many processes/GPUs (runs torchrun for you)")
    continue_train: bool = opt(False, "resume from the latest checkpoint of --name", aliases=("--resume",))
    save_epoch_freq: int = opt(5, "save <epoch>_net_*.safetensors every this many epochs")
    save_latest_freq: int = opt(5000, "save the latest checkpoint every this many iterations")
    print_freq: int = opt(100, "log the losses every this many iterations: to metrics.jsonl, and as a line on stdout "
                          "where there is no progress bar (no terminal, or --quiet)")
    display_freq: int = opt(400, "save a sample grid (A, G(A), B) and the loss plot every this many iterations")
    val_freq: int = opt(0, "every this many iterations, score --val_images pairs of <dataroot>/val (L1, PSNR, SSIM "
                        "under the paper's test protocol, as fastpix test runs it) into metrics.jsonl, TensorBoard "
                        "and wandb, with a sample grid; training is unchanged by it (0: never)")
    val_images: int = opt(8, "how many val pairs --val_freq scores (the first ones, in order)")
    tensorboard: bool = opt(False, "also log scalars and sample grids for TensorBoard (pip install tensorboard)")
    serial_batches: bool = opt(False, "take the images in order, without shuffling")
    save_by_iter: bool = opt(False, "also save iter_<N>_net_{G,D}.safetensors at every --save_latest_freq "
                             "iterations")
    epoch: str = opt("latest", "which weights --continue_train loads: latest (an exact resume when the train state "
                     "is there) or an epoch number (fresh optimizers, from --epoch_count)")
    load_iter: int = opt(0, "with --continue_train, load iter_<load_iter>_net_* instead of --epoch (0: use --epoch)")
    use_wandb: bool = opt(False, "also log to Weights & Biases (pip install wandb)")
    wandb_project_name: str = opt("CycleGAN-and-pix2pix", "Weights & Biases project of --use_wandb")


@dataclass
class TestConfig:
    name: str = opt("experiment_name", "name of the experiment to load from <checkpoints_dir>/<name>")
    checkpoints_dir: str = opt("./checkpoints", "where the checkpoints are")
    checkpoint: str = opt(None, "a run folder (with config.json and <epoch>_net_G.*) or a generator weights file "
                          "(a reference .pth too: its architecture is read from its keys), instead of "
                          "<checkpoints_dir>/<name>")
    results_dir: str = opt("./results", "results are written to <results_dir>/<name>/<phase>_<epoch>/")
    phase: str = opt("test", "dataset split to run on")
    epoch: str = opt("latest", "which checkpoint to load: latest or an epoch number")
    load_iter: int = opt(0, "load iter_<load_iter>_net_G (saved with --save_by_iter) instead of --epoch, when > 0")
    num_test: int = opt(50, "how many images to run")
    eval: bool = opt(False, "use running BatchNorm statistics and no dropout (model.eval())")
    seed: int = opt(0, "random seed for the dropout noise")
    device: str = opt(None, "torch device (default: cuda if available, else cpu)")
    precision: str = opt(None, "with --eval: fp32 or bf16 (default: bf16 on GPUs that support it and on CPUs with "
                         "native bf16, else fp32); the paper's protocol (dropout on) runs fp32, as the reference",
                         choices=("fp32", "bf16"))
    sort: str = opt("name", "order of the results page: by file name, or worst L1 first",
                    choices=("name", "worst"))

    def weights_tag(self) -> str:
        """The <tag> of <tag>_net_G to load: iter_<N> with --load_iter N > 0, else --epoch (as the reference)."""
        return f"iter_{self.load_iter}" if self.load_iter > 0 else self.epoch


@dataclass
class EvalConfig(TestConfig):
    results_dir: str = opt(TestConfig.results_dir, "the page goes to <results_dir>/<name>/eval_<phase>_<epoch>/")
    phase: str = opt("val", "dataset split to score")
    num_test: int = opt(1_000_000, "score the first this many images of the split")
    results: str = opt(None, "score saved results instead: a folder with images/<stem>_{fake_B,real_B}.png")
    json: str = opt(None, "also write the report as JSON to this path")
    baselines: bool = opt(False, "also score the trivial baselines: output = input, output = mean training target")
    inception_weights: str = opt(None, "TorchScript Inception feature network for FID/KID (never downloaded)")
    segmenter: str = opt(None, "TorchScript segmentation network for the FCN-score (float N×3×H×W in [0, 1] -> "
                         "class logits N×C×H×W; never downloaded): needs --label-palette or --label-dir")
    label_palette: str = opt(None, "FCN-score ground truth from the input label maps (real_A): a JSON file "
                             '{"classes": [{"id": 0, "name": "road", "rgb": [128, 64, 128]}, ...], "ignore_id": 255}, '
                             "or a built-in palette: facades, demo")
    label_dir: str = opt(None, "FCN-score ground truth from class-id PNGs instead: <label_dir>/<stem>.png")
    label_tolerance: float = opt(10.0, "--label-palette: a pixel takes the class of the nearest palette colour "
                                 "within this RGB distance (resized or JPEG label maps blur colours), else it is "
                                 "ignored; 0 = exact colours only")


@dataclass
class StudyConfig:
    """The real-vs-fake perceptual study of the paper (§4.1): `fastpix study make` writes these into the page."""
    practice_trials: int = opt(10, "practice trials at the start of a session, with feedback")
    scored_trials: int = opt(40, "scored trials that follow, without feedback")
    attention_checks: int = opt(2, "extra trials among the scored ones pitting a real image against a blank one "
                                "(not scored; an observer who misses one is flagged and left out of the pooled score)")
    exposure_ms: int = opt(1000, "how long each pair is shown before it is blanked")
    feedback_ms: int = opt(1000, "how long practice feedback stays on screen")
    gap_ms: int = opt(500, "blank pause (a fixation cross) before each pair")
    image_size: int = opt(256, "images are shown at this many CSS pixels square (the paper: 256)")
    seed: int = opt(0, "study seed: with the observer id it fixes the model, the image order and the sides")


@dataclass
class HttpServerConfig:
    """What both HTTP servers (`fastpix serve`, `fastpix study serve`) take: where to listen, and how long and how
    many clients they wait for: uvicorn's own limits, and the two read deadlines it does not have, so that slow or
    stalled clients cannot hold connections (and the memory of their bodies) for ever."""
    host: str = opt("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = opt(8000, "TCP port to listen on (0: any free port)")
    header_timeout_s: float = opt(10.0, "a connection that has not sent a whole request head (request line and "
                                  "headers, at most 16 KiB: h11's limit) within this many seconds of opening, or of "
                                  "its previous answer, is closed (uvicorn has no such limit)")
    body_timeout_s: float = opt(30.0, "a request body not whole within this many seconds of its head is answered 408 "
                                "and its connection closed (uvicorn has no such limit)")
    keep_alive_s: int = opt(5, "an idle connection is closed this many seconds after its last answer (uvicorn's "
                            "--timeout-keep-alive)")
    limit_concurrency: int = opt(512, "connections and requests at once, at most (uvicorn's --limit-concurrency): "
                                 "beyond, a request is answered 503; each may hold up to --max-bytes of body while "
                                 "it is read")


@dataclass
class StudyServeConfig(HttpServerConfig):
    port: int = opt(8100, "TCP port to listen on (0: any free port)")
    answers: str = opt(None, "JSON-lines file the sessions are appended to (default: <study>/answers.jsonl)")
    max_bytes: int = opt(256 * 2 ** 10, "largest answers submission accepted (bigger: 413)")


def default_compile_cache_dir() -> str:
    """InferenceConfig.compile_cache_dir's default."""
    return os.path.join(user_cache_dir(), "compiled")


@dataclass
class InferenceConfig:
    """What `fastpix predict` and `fastpix serve` share: which generator, and how it runs."""
    checkpoint: str = opt(None, "a run folder (config.json + <epoch>_net_G.*), a .safetensors file or a reference "
                          ".pth", required=True)
    epoch: str = opt("latest", "which checkpoint of a run folder: latest or an epoch number")
    norm_mode: str = opt("instance", "BatchNorm at inference: instance (per-image statistics: the paper's protocol "
                         "at batch 1, independent of the batch), batch (statistics of the whole batch), running "
                         "(running statistics folded into the convs: fastest)", choices=INFERENCE_NORM_MODES)
    dropout: bool = opt(False, "dropout on, as in the paper's test protocol (noise seeded per image)")
    device: str = opt(None, "torch device (default: cuda if available, else cpu)")
    precision: str = opt(None, "fp32, bf16 or fp16 (fp16: CUDA only) (default: bf16 on GPUs that support it and on "
                         "CPUs with native bf16 (AVX-512 BF16, AMX), else fp32)", choices=("fp32", "bf16", "fp16"))
    runtime: str = opt("auto", "how the generator runs: eager (PyTorch module by module), compiled (CPU: "
                       "AOTInductor packages with frozen weights, built once and cached on disk), onnxruntime (CPU, "
                       "fp32; pip install 'fastpix[onnx]'); auto = compiled on a CPU for norm_mode instance/running "
                       f"without dropout, except for a predict of fewer than {COMPILE_PAYS_FROM_IMAGES} images whose "
                       "packages are not built yet (building would not pay for itself), else eager (default: auto)",
                       choices=INFERENCE_RUNTIMES)
    compile_cache_dir: str = opt(None, "where compiled generators and ONNX files are kept, one folder per weights, "
                                 "norm mode, precision, torch version and CPU (default: $XDG_CACHE_HOME/fastpix/"
                                 "compiled, else ~/.cache/fastpix/compiled)")
    compile_cache_max_gb: float = opt(COMPILE_CACHE_MAX_GB, "bound on --compile_cache_dir: after each build the "
                                      "least recently used packages are removed until it fits, never one a running "
                                      "process has loaded (`fastpix cache list` shows what it holds)")
    max_loaded_packages: int = opt(MAX_LOADED_PACKAGES, "compiled packages kept loaded at once, the least recently "
                                   "used dropped first (one per padded size and batch piece; each holds its own "
                                   "weights, ~220 MB resident at unet_256 bf16)")
    backend: str = opt(None, "eager, or triton (the fused kernels; without CUDA they run in Triton's interpreter: "
                       "slow, for checking) (default: eager)", choices=MODEL_BACKENDS)
    netG: str = opt(None, "generator architecture, when neither config.json nor the weights tell it",
                    choices=NET_G_CHOICES)
    ngf: int = opt(None, "generator filters, when neither config.json nor the weights tell it")
    norm: str = opt(None, "the checkpoint's normalisation layer, when neither config.json nor the weights tell it",
                    choices=NORM_CHOICES)
    input_nc: int = opt(None, "input channels, when neither config.json nor the weights tell it")
    output_nc: int = opt(None, "output channels, when neither config.json nor the weights tell it")
    model: str = opt(None, "colorization: take colour or grey images, colour them from their L (CIE Lab) and keep "
                     "it; pix2pix: translate images as they are (default: config.json's, else colorization for a "
                     "generator of 1 input and 2 output channels, else pix2pix)", choices=("pix2pix", "colorization"))


@dataclass
class CacheConfig:
    """`fastpix cache list|clear`: the compiled packages and the decode caches on disk (both unless one is named)."""
    compiled: bool = opt(False, "the compiled generators (AOTInductor packages, ONNX files, failed builds)")
    pairs: bool = opt(False, "the decode caches of training data sets")
    compile_cache_dir: str = opt(None, "the compiled cache's folder (default: $XDG_CACHE_HOME/fastpix/compiled, else "
                                 "~/.cache/fastpix/compiled)")
    cache_dir: str = opt(None, "the decode caches' folder (default: $XDG_CACHE_HOME/fastpix/pairs, else "
                         "~/.cache/fastpix/pairs)")


@dataclass
class PredictConfig(InferenceConfig):
    batch_size: int = opt(8, "images per forward pass (same-size images share a pass)")
    seed: int = opt(0, "dropout noise: file k of the run draws from (seed, k), whatever the batch size")


# The draw page's canvas without a --canvas-size or a trained crop: the paper's crop, and Hesse's canvases.
DRAW_CANVAS_SIZE = 256


@dataclass
class ServeConfig(HttpServerConfig, InferenceConfig):
    max_batch_size: int = opt(16, "most requests one forward pass serves")
    max_wait_ms: float = opt(0.0, "after the first request of a batch, wait this long for more (0: a batch runs as "
                             "soon as the worker is free; requests arriving meanwhile form the next one)")
    max_queue: int = opt(256, "requests waiting beyond this many are refused with 503 and Retry-After")
    timeout_s: float = opt(30.0, "a request not answered within this many seconds of its body's arrival gets 504")
    max_bytes: int = opt(20 * 2 ** 20, "largest request body accepted (bigger: 413)")
    max_pixels: int = opt(4096 * 4096, "largest image accepted, in pixels after padding to the generator's "
                          "multiple (bigger: 413); also the most padded pixels one forward pass computes")
    max_queue_pixels: int = opt(4 * 4096 * 4096, "padded pixels of the requests waiting, at most (beyond: 503 with "
                                "Retry-After; an empty queue admits any one request)")
    graph_size: int = opt(256, "CUDA only: images that pad to graph_size x graph_size run as CUDA graphs, one per "
                          "batch bucket, captured before /readyz reports ready (0: no graphs)")
    canvas_size: int = opt(None, "side in pixels of the draw page's canvas (GET /) (default: the crop size the "
                           f"checkpoint was trained at, from its config.json, else {DRAW_CANVAS_SIZE})")
    palette: str = opt(None, "the draw page's label colours: a palette file as eval's --label-palette takes, or a "
                       "built-in one: facades, demo (default: none; a black pen on white, as edges models expect)")
    examples: str = opt(None, "a split whose pairs the draw page's 'random example' button shows (input, and its "
                        "real target beside the output): a folder of aligned A|B images, or one with A/ and B/")
    direction: str = opt(None, "which half of an --examples pair is the model's input: AtoB or BtoA (default: the "
                         "checkpoint's config.json, else AtoB)", choices=("AtoB", "BtoA"))


# ------------------------------------------------------------------------------ the reference's other options
# pytorch-CycleGAN-and-pix2pix's options that fastpix has no field for above, accepted so that a reference user's
# command line runs unchanged. Each says what it does in fastpix.

@dataclass
class ReferenceConfig:
    """Options of the reference's train and test alike (its --model and --dataset_mode are ModelConfig's and
    DataConfig's: config.json records them)."""
    gpu_ids: str = opt(None, "'-1' for the CPU, '0' for cuda:0 (the first id; more GPUs: --nproc); same as "
                       "--device (default: cuda if available)")
    suffix: str = opt("", "customised suffix: --name becomes <name>_<suffix>, the suffix formatted with the "
                      "options, e.g. {netG}_size{load_size}")
    verbose: bool = opt(False, "print the networks and their parameter counts before starting")
    pool_size: int = opt(0, "ignored: the image pool size; pix2pix has no pool (the reference's pix2pix ignores "
                         "it too)")


@dataclass
class ReferenceDisplayConfig:
    """The reference's visdom and HTML display (train; test and eval accept them too). fastpix shows a run instead
    as <run>/samples/*.png and <run>/loss.png (every --display_freq iterations), metrics.jsonl (every --print_freq)
    and TensorBoard."""
    display_id: int = opt(1, "ignored: the visdom window id")
    display_server: str = opt("http://localhost", "ignored: the visdom server")
    display_port: int = opt(8097, "ignored: the visdom port")
    display_env: str = opt("main", "ignored: the visdom environment")
    display_ncols: int = opt(4, "ignored: images per row of the visdom panel")
    display_winsize: int = opt(256, "test: the width in px of the images on the results page, as the reference's; "
                               "train and eval: ignored (fastpix's sample grids are at crop_size)")
    no_html: bool = opt(False, "ignored: fastpix writes no web/ folder (its samples are in <run>/samples/)")
    update_html_freq: int = opt(1000, "ignored: the web/ page cadence (samples follow --display_freq)")


@dataclass
class ReferenceTestConfig:
    """The reference's test options beyond TestConfig."""
    aspect_ratio: float = opt(1.0, "resize the saved images to height/width = aspect_ratio, as the reference does "
                              "(bicubic; the scores are of the unresized images)")
    batch_size: int = opt(1, "ignored: the test protocol runs one image at a time (the reference's test sets 1 "
                          "too)")
    serial_batches: bool = opt(False, "accepted: test always takes the images in order")
    use_wandb: bool = opt(False, "ignored by test: the results are index.html and scores.json")
    wandb_project_name: str = opt("CycleGAN-and-pix2pix", "ignored by test (see --use_wandb)")


# ------------------------------------------------------------------------------ the other subcommands

@dataclass
class DemoDataConfig:
    """`fastpix data demo`; also the data `fastpix train` uses without --dataroot."""
    out: str = opt(None, "folder to write", required=True)
    size: int = opt(64, "side of each image half in pixels")
    train: int = opt(400, "training pairs")
    val: int = opt(40, "validation pairs")
    test: int = opt(40, "test pairs")
    seed: int = opt(0, "generator seed")
    force: bool = opt(False, "write into --out even if it is not empty (files of the same names are replaced)")


@dataclass
class DemoConfig:
    out: str = opt("demo_out", "folder for data, checkpoints and results")
    epochs: int = opt(5, "epochs at full learning rate, then as many decaying")
    gan_mode: str = opt(TrainConfig.gan_mode, "GAN objective; none = the L1-only baseline",
                        choices=("vanilla", "lsgan", "none"))
    precision: str = opt(None, "training precision, as for train (default: bf16 on GPUs that support it and on "
                         "CPUs with native bf16, else fp32)", choices=("fp32", "bf16", "fp16"))
    device: str = opt(None, "torch device (default: cuda if available, else cpu): the demo's scale follows it")


# The demo's scale: the paper's unet_256 at 256² on a GPU; on a CPU a model that trains in a few minutes.
DEMO_SCALE = {"gpu": {"size": 256, "netG": "unet_256", "ngf": 64, "ndf": 64, "load_size": 286, "batch_size": 1},
              "cpu": {"size": 64, "netG": "unet_64", "ngf": 32, "ndf": 32, "load_size": 72, "batch_size": 4}}


def demo_options(gpu: bool, epochs: int = DemoConfig.epochs) -> dict:
    """The options the demo trains with (fields of ModelConfig, DataConfig and TrainConfig); also what `fastpix
    train` uses without --dataroot."""
    scale = DEMO_SCALE["gpu" if gpu else "cpu"]
    return {"netG": scale["netG"], "ngf": scale["ngf"], "ndf": scale["ndf"], "load_size": scale["load_size"],
            "crop_size": scale["size"], "batch_size": scale["batch_size"], "n_epochs": epochs,
            "n_epochs_decay": epochs, "print_freq": 50, "display_freq": 200, "save_epoch_freq": max(1, epochs)}


def _fields(cls, values: dict) -> dict:
    return {k: v for k, v in values.items() if k in cls.__dataclass_fields__}


def demo_configs(cfg: DemoConfig, gpu: bool) -> tuple:
    """(ModelConfig, DataConfig, TrainConfig, TestConfig) of `fastpix demo` writing under cfg.out."""
    options = demo_options(gpu, cfg.epochs)
    model = ModelConfig(**_fields(ModelConfig, options))
    data = DataConfig(dataroot=os.path.join(cfg.out, "data"), **_fields(DataConfig, options))
    train = TrainConfig(name="demo", checkpoints_dir=os.path.join(cfg.out, "checkpoints"), gan_mode=cfg.gan_mode,
                        precision=cfg.precision, device=cfg.device, **_fields(TrainConfig, options))
    test = TestConfig(name="demo", checkpoints_dir=train.checkpoints_dir,
                      results_dir=os.path.join(cfg.out, "results"), num_test=40, device=cfg.device)
    return model, data, train, test


@dataclass
class ExportConfig:
    format: str = opt("pth", "output format: pth (reference state dicts), onnx, or pt2 (an AOTInductor package for "
                      "this CPU: the compiled runtime's artifact)", choices=("pth", "onnx", "pt2"))
    name: str = opt(None, "run name (required unless --checkpoint is given)")
    checkpoint: str = opt(None, "a run folder or a weights file, instead of --name")
    norm_mode: str = opt("instance", "onnx: BatchNorm as per-image statistics (the paper's protocol at batch 1) or "
                         "folded running statistics", choices=EXPORT_NORM_MODES)
    checkpoints_dir: str = opt(TrainConfig.checkpoints_dir, "where the run is")
    epoch: str = opt("latest", "which checkpoint")
    out: str = opt(None, "folder to write into: <epoch>_net_{G,D}.pth, or the .onnx / .pt2 file", required=True)
    image_size: str = opt("256x256", "pt2: the HxW (or one side) of the images the package takes (multiples of the "
                    "generator's: pad others, as the Predictor does)")
    batch_size: int = opt(1, "pt2: images per call")
    precision: str = opt(None, "pt2: fp32 or bf16 (default: bf16 where this CPU has it natively)")


@dataclass
class BenchConfig:
    suite: tuple = opt(("train",), "which benchmark suites to run", choices=BENCH_SUITES, nargs="+")
    json: str = opt("fastpix-bench.json", "where to write the results (relative to the current folder)")
    select: str = opt(None, "only cases whose name matches this pytest -k expression (default: all)")
    cpu_config: str = opt("reduced", "on a CPU: reduced (small models), real (unet_256 ngf 64 at 256², few "
                          "rounds) or dry (tiny shapes, no compiler builds: a smoke run)",
                          choices=("reduced", "real", "dry"))
    layers: bool = opt(False, "instead: per pix2pix conv layer (batch 1/16/64, bf16), the fused Triton block vs "
                       "cuDNN and which one backend triton uses (measured once, cached)")


# ------------------------------------------------------------------------------ standard data sets and models
# The reference's download scripts (datasets/download_pix2pix_dataset.sh, scripts/download_pix2pix_model.sh) fetch
# <mirror>/datasets/<name>.tar.gz and <mirror>/models-pytorch/<name>.pth from this server; --mirror or
# $FASTPIX_MIRROR replaces it.
PIX2PIX_MIRROR = "http://efrosgans.eecs.berkeley.edu/pix2pix"
MIRROR_ENV = "FASTPIX_MIRROR"
# name -> what it holds, as the reference's docs/datasets.md describes it (A|B: A on the left).
PIX2PIX_DATASETS = {
    "facades": "400 training pairs, A = photo, B = label map (labels -> photo: --direction BtoA)",
    "maps": "1,096 training pairs, A = aerial photo, B = map",
    "edges2shoes": "50k training pairs, A = HED edges, B = shoe photo",
    "edges2handbags": "137k training pairs, A = HED edges, B = handbag photo",
    "night2day": "~20k pairs, A = night, B = day (day -> night: --direction BtoA)",
    "cityscapes": "not downloadable (licence): prepared from the official zips by `fastpix data cityscapes`",
}
# The reference's pretrained generators: name -> (the data set it was trained on, the --direction it expects).
# Directions as the reference's docs give them (README, docs/datasets.md: facades labels -> photo and night2day's
# day -> night are BtoA).
PRETRAINED_MODELS = {
    "facades_label2photo": ("facades", "BtoA"),
    "sat2map": ("maps", "AtoB"),
    "map2sat": ("maps", "BtoA"),
    "edges2shoes": ("edges2shoes", "AtoB"),
    "day2night": ("night2day", "BtoA"),
}
# A transfer that breaks off is resumed at once while it makes progress; one that fails without progress waits
# DOWNLOAD_BACKOFF_S, then twice that, ... (at most DOWNLOAD_BACKOFF_MAX_S) before the next of its --retries.
DOWNLOAD_BACKOFF_S = 1.0
DOWNLOAD_BACKOFF_MAX_S = 30.0


@dataclass
class DownloadConfig:
    """What every download shares: where from, and how hard to try."""
    mirror: str = opt(None, f"a server laid out as {PIX2PIX_MIRROR} (datasets/<name>.tar.gz, models-pytorch/"
                      f"<name>.pth) to download from instead (default: ${MIRROR_ENV}, else that server)")
    force: bool = opt(False, "download again and replace what is there (default: leave it alone)")
    retries: int = opt(5, "tries after a failed or broken-off transfer without progress (waiting 1, 2, 4 … s "
                       "between them); a transfer that broke off after progress resumes at once (HTTP Range)")
    read_timeout_s: float = opt(60.0, "seconds without a byte before a connection counts as broken off")


@dataclass
class DatasetDownloadConfig(DownloadConfig):
    name: str = opt(None, "the data set: " + "; ".join(f"{k}: {v}" for k, v in PIX2PIX_DATASETS.items()),
                    choices=tuple(PIX2PIX_DATASETS), positional=True)
    root: str = opt("./datasets", "the data set goes to <root>/<name>/ (train/, val/, test/ as the archive has them)")


@dataclass
class ModelDownloadConfig(DownloadConfig):
    name: str = opt(None, "the pretrained generator (unet_256, ngf 64, batch norm): "
                    + "; ".join(f"{k}: data set {d}, --direction {x}" for k, (d, x) in PRETRAINED_MODELS.items()),
                    choices=tuple(PRETRAINED_MODELS), positional=True)
    checkpoints_dir: str = opt(TrainConfig.checkpoints_dir, "the generator goes to <checkpoints_dir>/<name>_pretrained"
                               "/latest_net_G.pth, where `fastpix test --name <name>_pretrained` looks")


@dataclass
class CombineConfig:
    """The reference's datasets/combine_A_and_B.py: <fold_A>/<split>/<name> beside <fold_B>/<split>/<name> (A on the
    left) -> <fold_AB>/<split>/<name>, for every split folder under fold_A."""
    fold_A: str = opt(None, "folder of A images, one sub-folder per split (train/, val/, test/ ...)", required=True)
    fold_B: str = opt(None, "folder of B images with the same splits and file names", required=True)
    fold_AB: str = opt(None, "output folder: <fold_AB>/<split>/<name>, A|B side by side", required=True)
    num_imgs: int = opt(1000000, "combine at most this many images per split (the first by name)")
    use_AB: bool = opt(False, "A and B in the same folders as <stem>_A.<ext> and <stem>_B.<ext> (fold_B may be "
                       "fold_A): written as <stem>.<ext>")
    no_multiprocessing: bool = opt(False, "one worker instead of one per core")
    resize: bool = opt(False, "resize B to A's size where they differ (bicubic; default: leave such a pair out and "
                       "list it)")


@dataclass
class CityscapesConfig:
    """The reference's datasets/prepare_cityscapes_dataset.py for pix2pix: photo (A) | colour label map (B)."""
    gtFine: str = opt(None, "the unzipped gtFine_trainvaltest.zip's gtFine/ folder (train/, val/ of <city>/"
                      "*_gtFine_color.png)", required=True, aliases=("--gtFine_dir",))
    leftImg8bit: str = opt(None, "the unzipped leftImg8bit_trainvaltest.zip's leftImg8bit/ folder (train/, val/ of "
                           "<city>/*_leftImg8bit.png)", required=True, aliases=("--leftImg8bit_dir",))
    out: str = opt(None, "output folder: train/ (2,975 pairs) and test/ (cityscapes' 500 val pairs), <i>.jpg",
                   required=True, aliases=("--output_dir",))
    size: int = opt(256, "side of each half in pixels (the reference: 256)")


@dataclass
class EdgesConfig:
    """An edges -> photo data set from photos: A = black edges on white, B = the photo, both size x size."""
    input: str = opt(None, "folder of photos (searched recursively; sub-folders such as train/ and test/ are kept)",
                     required=True)
    out: str = opt(None, "output folder: <out>/<sub-folder>/<stem>.png, edges | photo side by side", required=True)
    size: int = opt(256, "side of each half in pixels (photos are resized to size x size, aspect not kept)")
    hed: str = opt(None, "a HED network as TorchScript (float N×3×H×W RGB in [0, 1] -> edge probability N×1×H×W in "
                   "[0, 1]; never downloaded) instead of the built-in detector (`pydoc fastpix.data.edges` shows how "
                   "to export one)")
    threshold: float = opt(25 / 255, "edge strength kept after non-maximum suppression (the reference: 25/255)")
    small_edge: int = opt(5, "edges of fewer pixels than this are removed (the reference: 5)")
    device: str = opt(None, "torch device for --hed (default: cuda if available, else cpu)")
