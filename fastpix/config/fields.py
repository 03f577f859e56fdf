"""How a config field is declared (`opt`: its default and help), the smallest value each numeric flag takes, and
the choices of the flags that have them."""

from __future__ import annotations

from dataclasses import field


def opt(default, help, **kw):
    """A config field with its help text (and optional argparse extras: choices, flag aliases, nargs, required)."""
    return field(default=default, metadata={"help": help, **kw})


# The smallest value each numeric flag takes (by field name, in every config that has it): below it a run would
# divide by zero or build an empty network, so argparse refuses it with the flag's name.
MINIMUM = {
    "input_nc": 1,
    "output_nc": 1,
    "ngf": 1,
    "ndf": 1,
    "n_layers_D": 1,
    "load_size": 1,
    "crop_size": 1,
    "max_dataset_size": 1,
    "num_threads": 0,
    "batch_size": 1,
    "n_epochs": 0,
    "n_epochs_decay": 0,
    "epoch_count": 1,
    "max_iters": 1,
    "lr": 0.0,
    "lr_decay_iters": 1,
    "nproc": 1,
    "save_epoch_freq": 1,
    "save_latest_freq": 1,
    "print_freq": 1,
    "display_freq": 1,
    "val_freq": 0,
    "val_images": 1,
    "num_test": 0,
    "load_iter": 0,
    "max_batch_size": 1,
    "max_queue": 1,
    "max_bytes": 1,
    "max_pixels": 1,
    "graph_size": 0,
    "port": 0,
    "timeout_s": 0.0,
    "max_wait_ms": 0.0,
    "header_timeout_s": 0.1,
    "body_timeout_s": 0.1,
    "keep_alive_s": 1,
    "limit_concurrency": 1,
    "canvas_size": 8,
    "aspect_ratio": 0.0,
    "size": 8,
    "train": 0,
    "val": 0,
    "test": 0,
    "epochs": 1,
    "retries": 0,
    "read_timeout_s": 1.0,
    "num_imgs": 1,
    "threshold": 0.0,
    "small_edge": 1,
    "cache_max_gb": 0.0,
    "compile_cache_max_gb": 0.0,
    "max_loaded_packages": 1,
}


NET_G_CHOICES = tuple(f"unet_{2**k}" for k in range(5, 10)) + ("resnet_6blocks", "resnet_9blocks")
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
MODEL_CHOICES = ("pix2pix", "colorization", "test")
DATASET_MODES = ("aligned", "colorization", "single")
