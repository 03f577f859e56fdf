"""Every default of fastpix, in one place. The CLI, the API and the docs read these dataclasses.

Field names are the reference's option names (pytorch-CycleGAN-and-pix2pix), so that a reference user's flags map
one to one; the CLI also offers each with dashes. The `help` metadata is what `fastpix <cmd> --help` prints.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


def opt(default, help, **kw):
    """A config field with its help text (and optional argparse extras: choices, flag aliases)."""
    return field(default=default, metadata={"help": help, **kw})


NET_G_CHOICES = tuple(f"unet_{2 ** k}" for k in range(5, 10)) + ("resnet_6blocks", "resnet_9blocks")
NET_D_CHOICES = ("basic", "n_layers", "pixel")
NORM_CHOICES = ("batch", "instance", "none", "syncbatch")
INIT_CHOICES = ("normal", "xavier", "kaiming", "orthogonal")
PREPROCESS_CHOICES = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")
INFERENCE_NORM_MODES = ("instance", "batch", "running")
DATA_PIPELINE_CHOICES = ("auto", "cache", "stream", "loader")
INFERENCE_RUNTIMES = ("auto", "eager", "compiled", "onnxruntime")


@dataclass
class ModelConfig:
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
                       choices=("eager", "triton", "compile"))


@dataclass
class DataConfig:
    dataroot: str = opt(None, "dataset folder holding train/val/test splits (default: the built-in demo data)")
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
    cache_dir: str = opt(None, "folder of the decode-once cache (default: <dataroot>/.fastpix_cache)")


@dataclass
class TrainConfig:
    name: str = opt("experiment_name", "name of the experiment: checkpoints go to <checkpoints_dir>/<name>")
    checkpoints_dir: str = opt("./checkpoints", "where checkpoints are saved")
    batch_size: int = opt(1, "input batch size")
    n_epochs: int = opt(100, "epochs at the initial learning rate")
    n_epochs_decay: int = opt(100, "epochs to decay the learning rate linearly to zero")
    epoch_count: int = opt(1, "the starting epoch count")
    max_iters: int = opt(None, "stop after this many iterations in total (short runs)")
    lr: float = opt(0.0002, "initial learning rate for Adam")
    beta1: float = opt(0.5, "Adam momentum term beta1")
    lr_policy: str = opt("linear", "learning rate policy", choices=("linear", "step", "cosine"))
    lr_decay_iters: int = opt(50, "multiply by 0.1 every lr_decay_iters epochs (--lr_policy step)")
    gan_mode: str = opt("vanilla", "GAN objective (vanilla = BCE on logits, lsgan = MSE, none = L1 only: the "
                        "paper's L1 baseline, no discriminator)", choices=("vanilla", "lsgan", "none"))
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
    print_freq: int = opt(100, "write losses to metrics.jsonl every this many iterations")
    display_freq: int = opt(400, "save a sample grid (A, G(A), B) and the loss plot every this many iterations")
    tensorboard: bool = opt(False, "also log scalars and sample grids for TensorBoard (pip install tensorboard)")


@dataclass
class TestConfig:
    name: str = opt("experiment_name", "name of the experiment to load from <checkpoints_dir>/<name>")
    checkpoints_dir: str = opt("./checkpoints", "where the checkpoints are")
    results_dir: str = opt("./results", "results are written to <results_dir>/<name>/<phase>_<epoch>/")
    phase: str = opt("test", "dataset split to run on")
    epoch: str = opt("latest", "which checkpoint to load: latest or an epoch number")
    num_test: int = opt(50, "how many images to run")
    eval: bool = opt(False, "use running BatchNorm statistics and no dropout (model.eval())")
    seed: int = opt(0, "random seed for the dropout noise")
    device: str = opt(None, "torch device (default: cuda if available, else cpu)")
    sort: str = opt("name", "order of the results page: by file name, or worst L1 first",
                    choices=("name", "worst"))


@dataclass
class EvalConfig(TestConfig):
    checkpoint: str = opt(None, "a run folder (with config.json and <epoch>_net_G.*) or a generator weights file, "
                          "instead of <checkpoints_dir>/<name>")
    results_dir: str = opt(TestConfig.results_dir, "the page goes to <results_dir>/<name>/eval_<phase>_<epoch>/")
    phase: str = opt("val", "dataset split to score")
    num_test: int = opt(1_000_000, "score the first this many images of the split")
    results: str = opt(None, "score saved results instead: a folder with images/<stem>_{fake_B,real_B}.png")
    json: str = opt(None, "also write the report as JSON to this path")
    baselines: bool = opt(False, "also score the trivial baselines: output = input, output = mean training target")
    inception_weights: str = opt(None, "TorchScript Inception feature network for FID/KID (never downloaded)")


def default_compile_cache_dir() -> str:
    """InferenceConfig.compile_cache_dir's default."""
    import os

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastpix", "compiled")


@dataclass
class InferenceConfig:
    """What `fastpix predict` and `fastpix serve` share: which generator, and how it runs."""
    checkpoint: str = opt(None, "a run folder (config.json + <epoch>_net_G.*), a .safetensors file or a reference "
                          ".pth (required)")
    epoch: str = opt("latest", "which checkpoint of a run folder: latest or an epoch number")
    norm_mode: str = opt("instance", "BatchNorm at inference: instance (per-image statistics: the paper's protocol "
                         "at batch 1, independent of the batch), batch (statistics of the whole batch), running "
                         "(running statistics folded into the convs: fastest)", choices=INFERENCE_NORM_MODES)
    dropout: bool = opt(False, "dropout on, as in the paper's test protocol (noise seeded per image)")
    device: str = opt(None, "torch device (default: cuda if available, else cpu)")
    precision: str = opt(None, "fp32, bf16 or fp16 (fp16: CUDA only) (default: bf16 on GPUs that support it and on "
                         "CPUs with native bf16 (AVX-512 BF16, AMX), else fp32)", choices=("fp32", "bf16", "fp16"))
    runtime: str = opt("auto", "how the generator runs: eager (PyTorch module by module), compiled (CPU: inductor "
                       "graphs with frozen weights, cached on disk), onnxruntime (CPU, fp32; pip install "
                       "'fastpix[onnx]'); auto = compiled on a CPU for norm_mode instance/running without dropout, "
                       "else eager (default: auto)", choices=INFERENCE_RUNTIMES)
    compile_cache_dir: str = opt(None, "where compiled generators and ONNX files are kept, one folder per weights, "
                                 "norm mode, precision, torch version and CPU (default: $XDG_CACHE_HOME/fastpix/"
                                 "compiled, else ~/.cache/fastpix/compiled)")
    backend: str = opt(None, "eager, or triton (the fused kernels; without CUDA they run in Triton's interpreter: "
                       "slow, for checking) (default: eager)", choices=("eager", "triton"))
    netG: str = opt(None, "generator architecture, when neither config.json nor the weights tell it",
                    choices=NET_G_CHOICES)
    ngf: int = opt(None, "generator filters, when neither config.json nor the weights tell it")
    norm: str = opt(None, "the checkpoint's normalisation layer, when neither config.json nor the weights tell it",
                    choices=NORM_CHOICES)
    input_nc: int = opt(None, "input channels, when neither config.json nor the weights tell it")
    output_nc: int = opt(None, "output channels, when neither config.json nor the weights tell it")


@dataclass
class PredictConfig(InferenceConfig):
    batch_size: int = opt(8, "images per forward pass (same-size images share a pass)")
    seed: int = opt(0, "dropout noise: file k of the run draws from (seed, k), whatever the batch size")


@dataclass
class ServeConfig(InferenceConfig):
    host: str = opt("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = opt(8000, "TCP port to listen on (0: any free port)")
    max_batch_size: int = opt(16, "most requests one forward pass serves")
    max_wait_ms: float = opt(0.0, "after the first request of a batch, wait this long for more (0: a batch runs as "
                             "soon as the worker is free; requests arriving meanwhile form the next one)")
    max_queue: int = opt(256, "requests waiting beyond this many are refused with 503 and Retry-After")
    timeout_s: float = opt(30.0, "a request not answered within this many seconds gets 504")
    max_bytes: int = opt(20 * 2 ** 20, "largest request body accepted (bigger: 413)")
    max_pixels: int = opt(4096 * 4096, "largest image accepted, in pixels (bigger: 413)")
    graph_size: int = opt(256, "CUDA only: images that pad to graph_size x graph_size run as CUDA graphs, one per "
                          "batch bucket, captured before /readyz reports ready (0: no graphs)")


def fields_of(cls):
    return dataclasses.fields(cls)


def from_dict(cls, values: dict):
    """Build a config from a dict, ignoring keys that belong to other configs."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})
