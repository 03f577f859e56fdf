"""Every default of fastpix, in one place. The CLI, the API and the docs read these dataclasses.

Field names are the reference's option names (pytorch-CycleGAN-and-pix2pix), so that a reference user's flags map
one to one; the CLI also offers each with dashes. The `help` metadata is what `fastpix <cmd> --help` prints.

One module per group of commands (run: train/test/eval; inference: predict/serve/export/cache; study; datasets: the
data commands; demo; bench; reference: the reference's options fastpix only accepts), beside fields (how a field
is declared, the flags' minimums and choices), defaults (the measured defaults, the cache folders) and model_kind
(the checks across a model and its data). Every name is importable from fastpix.config itself.
"""

from fastpix.config.bench import BenchConfig
from fastpix.config.datasets import (
    DOWNLOAD_BACKOFF_MAX_S,
    DOWNLOAD_BACKOFF_S,
    MIRROR_ENV,
    PIX2PIX_DATASETS,
    PIX2PIX_MIRROR,
    PRETRAINED_MODELS,
    CityscapesConfig,
    CombineConfig,
    DatasetDownloadConfig,
    DownloadConfig,
    EdgesConfig,
    ModelDownloadConfig,
)
from fastpix.config.defaults import (
    COMPILE_CACHE_MAX_GB,
    COMPILE_PAYS_FROM_IMAGES,
    DRAW_CANVAS_SIZE,
    MAX_LOADED_PACKAGES,
    PAIRS_CACHE_MAX_GB,
    SMALL_CONV_COLUMNS,
    default_compile_cache_dir,
    user_cache_dir,
)
from fastpix.config.demo import DEMO_SCALE, DemoConfig, DemoDataConfig, demo_configs, demo_options
from fastpix.config.fields import (
    BENCH_SUITES,
    DATA_PIPELINE_CHOICES,
    DATASET_MODES,
    EXPORT_NORM_MODES,
    INFERENCE_NORM_MODES,
    INFERENCE_RUNTIMES,
    INIT_CHOICES,
    MINIMUM,
    MODEL_BACKENDS,
    MODEL_CHOICES,
    NET_D_CHOICES,
    NET_G_CHOICES,
    NORM_CHOICES,
    PREPROCESS_CHOICES,
    TRAIN_BACKENDS,
    opt,
)
from fastpix.config.http import HttpServerConfig
from fastpix.config.inference import CacheConfig, ExportConfig, InferenceConfig, PredictConfig, ServeConfig
from fastpix.config.model_kind import COLORIZATION, COLORIZATION_NEEDS, check_crop, check_model, kind_layers, model_kind
from fastpix.config.reference import ReferenceConfig, ReferenceDisplayConfig, ReferenceTestConfig
from fastpix.config.run import DataConfig, EvalConfig, ModelConfig, TestConfig, TrainConfig
from fastpix.config.study import StudyConfig, StudyServeConfig

__all__ = [
    "BENCH_SUITES",
    "BenchConfig",
    "COLORIZATION",
    "COLORIZATION_NEEDS",
    "COMPILE_CACHE_MAX_GB",
    "COMPILE_PAYS_FROM_IMAGES",
    "CacheConfig",
    "CityscapesConfig",
    "CombineConfig",
    "DATASET_MODES",
    "DATA_PIPELINE_CHOICES",
    "DEMO_SCALE",
    "DOWNLOAD_BACKOFF_MAX_S",
    "DOWNLOAD_BACKOFF_S",
    "DRAW_CANVAS_SIZE",
    "DataConfig",
    "DatasetDownloadConfig",
    "DemoConfig",
    "DemoDataConfig",
    "DownloadConfig",
    "EXPORT_NORM_MODES",
    "EdgesConfig",
    "EvalConfig",
    "ExportConfig",
    "HttpServerConfig",
    "INFERENCE_NORM_MODES",
    "INFERENCE_RUNTIMES",
    "INIT_CHOICES",
    "InferenceConfig",
    "MAX_LOADED_PACKAGES",
    "MINIMUM",
    "MIRROR_ENV",
    "MODEL_BACKENDS",
    "MODEL_CHOICES",
    "ModelConfig",
    "ModelDownloadConfig",
    "NET_D_CHOICES",
    "NET_G_CHOICES",
    "NORM_CHOICES",
    "PAIRS_CACHE_MAX_GB",
    "PIX2PIX_DATASETS",
    "PIX2PIX_MIRROR",
    "PREPROCESS_CHOICES",
    "PRETRAINED_MODELS",
    "PredictConfig",
    "ReferenceConfig",
    "ReferenceDisplayConfig",
    "ReferenceTestConfig",
    "SMALL_CONV_COLUMNS",
    "ServeConfig",
    "StudyConfig",
    "StudyServeConfig",
    "TRAIN_BACKENDS",
    "TestConfig",
    "TrainConfig",
    "check_crop",
    "check_model",
    "default_compile_cache_dir",
    "demo_configs",
    "demo_options",
    "kind_layers",
    "model_kind",
    "opt",
    "user_cache_dir",
]
