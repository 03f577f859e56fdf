"""The configs of a training run and of its scoring: the model, the data, training, test and eval."""

from __future__ import annotations

from dataclasses import dataclass

from fastpix.config.defaults import PAIRS_CACHE_MAX_GB
from fastpix.config.fields import (
    DATA_PIPELINE_CHOICES,
    DATASET_MODES,
    INIT_CHOICES,
    MODEL_CHOICES,
    NET_D_CHOICES,
    NET_G_CHOICES,
    NORM_CHOICES,
    PREPROCESS_CHOICES,
    TRAIN_BACKENDS,
    opt,
)


@dataclass
class ModelConfig:
    model: str = opt(
        "pix2pix",
        "pix2pix; colorization: the reference's grey → colour model, pix2pix from the L of CIE "
        "Lab to its ab (implies --dataset_mode colorization, --input_nc 1, --output_nc 2); test: the "
        "reference's single-image generator run, which is `fastpix predict`",
        choices=MODEL_CHOICES,
    )
    input_nc: int = opt(3, "channels of the input image A (1 = grayscale)")
    output_nc: int = opt(3, "channels of the output image B (1 = grayscale)")
    ngf: int = opt(64, "generator filters in the last conv layer")
    ndf: int = opt(64, "discriminator filters in the first conv layer")
    netG: str = opt("unet_256", "generator architecture", choices=NET_G_CHOICES)
    netD: str = opt("basic", "discriminator architecture (basic = 70x70 PatchGAN)", choices=NET_D_CHOICES)
    n_layers_D: int = opt(3, "discriminator conv layers when --netD n_layers")
    norm: str = opt(
        "batch", "normalisation layer (syncbatch: BatchNorm synchronised across GPUs)", choices=NORM_CHOICES
    )
    init_type: str = opt("normal", "weight initialisation", choices=INIT_CHOICES)
    init_gain: float = opt(0.02, "scale of the weight initialisation")
    no_dropout: bool = opt(False, "no dropout in the generator (pix2pix uses dropout 0.5 as its noise)")
    backend: str = opt(
        None,
        "eager, triton (fused norm+activation kernels and losses; on a CPU through Triton's "
        "slow interpreter) or compile (torch.compile of eager; training only) (default: eager)",
        choices=TRAIN_BACKENDS,
    )


@dataclass
class DataConfig:
    dataroot: str = opt(None, "dataset folder holding train/val/test splits (default: the built-in demo data)")
    dataset_mode: str = opt(
        "aligned",
        "aligned: A|B files side by side, or A/ and B/ folders; colorization: single "
        "RGB images, A their L and B their ab (implies --model colorization); single: images "
        "without targets, which is `fastpix predict`",
        choices=DATASET_MODES,
    )
    direction: str = opt("AtoB", "translate A to B or B to A", choices=("AtoB", "BtoA"))
    load_size: int = opt(286, "scale images to this size before cropping")
    crop_size: int = opt(256, "then crop to this size")
    preprocess: str = opt("resize_and_crop", "scaling and cropping at load time", choices=PREPROCESS_CHOICES)
    no_flip: bool = opt(False, "do not flip images horizontally for augmentation")
    max_dataset_size: int = opt(None, "use at most this many images of the split")
    num_threads: int = opt(2, "data loading workers: decode threads (cache, stream) or DataLoader processes (loader)")
    skip_bad_images: bool = opt(False, "warn about and skip unreadable images instead of stopping")
    data_pipeline: str = opt(
        "auto",
        "how training reads pairs: cache (decode and resize each pair once, then "
        "crop/flip/normalize batched on the device), stream (decode threads into a bounded "
        "ring of pinned buffers, for data sets too big to cache), loader (the reference's "
        "per-item DataLoader); auto = cache if it fits on the GPU, in RAM or on disk, else "
        "stream, and loader when --preprocess is not resize_and_crop",
        choices=DATA_PIPELINE_CHOICES,
    )
    cache_dir: str = opt(
        None,
        "folder of the decode-once cache (default: a folder per data set under "
        "$XDG_CACHE_HOME/fastpix/pairs, else ~/.cache/fastpix/pairs)",
    )
    cache_max_gb: float = opt(
        PAIRS_CACHE_MAX_GB,
        "bound on the decode caches on disk (all data sets under the "
        "default folder, or --cache_dir's): after a build, the least recently used data sets' "
        "caches are removed until they fit, never one a run is using; a data set whose cache "
        "alone is larger is cached in memory or streamed",
    )


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
    lr_policy: str = opt(
        "linear",
        "learning rate policy (plateau: the reference's ReduceLROnPlateau on pix2pix's "
        "constant metric, x0.2 every 6 epochs after the first)",
        choices=("linear", "step", "plateau", "cosine"),
    )
    lr_decay_iters: int = opt(50, "multiply by 0.1 every lr_decay_iters epochs (--lr_policy step)")
    gan_mode: str = opt(
        "vanilla",
        "GAN objective (vanilla = BCE on logits, lsgan = MSE, wgangp = the reference's "
        "Wasserstein loss, no gradient penalty in pix2pix, none = L1 only: the paper's L1 baseline, "
        "no discriminator)",
        choices=("vanilla", "lsgan", "wgangp", "none"),
    )
    lambda_L1: float = opt(100.0, "weight of the L1 loss")
    seed: int = opt(0, "random seed: same seed and device give the same weights")
    device: str = opt(None, "torch device (default: cuda if available, else cpu)")
    precision: str = opt(
        None,
        "fp32, bf16 or fp16 (autocast; fp16 with a gradient scaler) (default: bf16 on GPUs "
        "that support it and on CPUs with native bf16 (AVX-512 BF16, AMX; then channels-last too), "
        "else fp32)",
        choices=("fp32", "bf16", "fp16"),
    )
    tf32: bool = opt(
        False,
        "let fp32 convolutions and matmuls use TF32 tensor cores (faster, ~1e-3 relative "
        "error); off by default so that --precision fp32 means fp32",
    )
    cuda_graphs: bool = opt(
        None, "capture the whole iteration in a CUDA graph (default: on with CUDA, except with --backend compile)"
    )
    nproc: int = opt(None, "train on this many processes/GPUs (runs torchrun for you)")
    continue_train: bool = opt(False, "resume from the latest checkpoint of --name", aliases=("--resume",))
    save_epoch_freq: int = opt(5, "save <epoch>_net_*.safetensors every this many epochs")
    save_latest_freq: int = opt(5000, "save the latest checkpoint every this many iterations")
    print_freq: int = opt(
        100,
        "log the losses every this many iterations: to metrics.jsonl, and as a line on stdout "
        "where there is no progress bar (no terminal, or --quiet)",
    )
    display_freq: int = opt(400, "save a sample grid (A, G(A), B) and the loss plot every this many iterations")
    val_freq: int = opt(
        0,
        "every this many iterations, score --val_images pairs of <dataroot>/val (L1, PSNR, SSIM "
        "under the paper's test protocol, as fastpix test runs it) into metrics.jsonl, TensorBoard "
        "and wandb, with a sample grid; training is unchanged by it (0: never)",
    )
    val_images: int = opt(8, "how many val pairs --val_freq scores (the first ones, in order)")
    tensorboard: bool = opt(False, "also log scalars and sample grids for TensorBoard (pip install tensorboard)")
    serial_batches: bool = opt(False, "take the images in order, without shuffling")
    save_by_iter: bool = opt(False, "also save iter_<N>_net_{G,D}.safetensors at every --save_latest_freq iterations")
    epoch: str = opt(
        "latest",
        "which weights --continue_train loads: latest (an exact resume when the train state "
        "is there) or an epoch number (fresh optimizers, from --epoch_count)",
    )
    load_iter: int = opt(0, "with --continue_train, load iter_<load_iter>_net_* instead of --epoch (0: use --epoch)")
    use_wandb: bool = opt(False, "also log to Weights & Biases (pip install wandb)")
    wandb_project_name: str = opt("CycleGAN-and-pix2pix", "Weights & Biases project of --use_wandb")


@dataclass
class TestConfig:
    name: str = opt("experiment_name", "name of the experiment to load from <checkpoints_dir>/<name>")
    checkpoints_dir: str = opt("./checkpoints", "where the checkpoints are")
    checkpoint: str = opt(
        None,
        "a run folder (with config.json and <epoch>_net_G.*) or a generator weights file "
        "(a reference .pth too: its architecture is read from its keys), instead of "
        "<checkpoints_dir>/<name>",
    )
    results_dir: str = opt("./results", "results are written to <results_dir>/<name>/<phase>_<epoch>/")
    phase: str = opt("test", "dataset split to run on")
    epoch: str = opt("latest", "which checkpoint to load: latest or an epoch number")
    load_iter: int = opt(0, "load iter_<load_iter>_net_G (saved with --save_by_iter) instead of --epoch, when > 0")
    num_test: int = opt(50, "how many images to run")
    eval: bool = opt(False, "use running BatchNorm statistics and no dropout (model.eval())")
    seed: int = opt(0, "random seed for the dropout noise")
    device: str = opt(None, "torch device (default: cuda if available, else cpu)")
    precision: str = opt(
        None,
        "with --eval: fp32 or bf16 (default: bf16 on GPUs that support it and on CPUs with "
        "native bf16, else fp32); the paper's protocol (dropout on) runs fp32, as the reference",
        choices=("fp32", "bf16"),
    )
    sort: str = opt("name", "order of the results page: by file name, or worst L1 first", choices=("name", "worst"))

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
    segmenter: str = opt(
        None,
        "TorchScript segmentation network for the FCN-score (float N×3×H×W in [0, 1] -> "
        "class logits N×C×H×W; never downloaded): needs --label-palette or --label-dir",
    )
    label_palette: str = opt(
        None,
        "FCN-score ground truth from the input label maps (real_A): a JSON file "
        '{"classes": [{"id": 0, "name": "road", "rgb": [128, 64, 128]}, ...], "ignore_id": 255}, '
        "or a built-in palette: facades, demo",
    )
    label_dir: str = opt(None, "FCN-score ground truth from class-id PNGs instead: <label_dir>/<stem>.png")
    label_tolerance: float = opt(
        10.0,
        "--label-palette: a pixel takes the class of the nearest palette colour "
        "within this RGB distance (resized or JPEG label maps blur colours), else it is "
        "ignored; 0 = exact colours only",
    )
