"""fastpix build: the Python package, the Triton kernels (kernels/ -> fastpix.kernels), the benchmark suites that
`fastpix bench` runs (bench/suites/ -> fastpix.bench_suites) and the optional C++ decoder (csrc/ -> fastpix._decode).

The decoder links the system libjpeg(-turbo) and libpng found by pkg-config. When either is missing, or the
compile fails, the install still succeeds without it and fastpix decodes with PIL
(fastpix.data.decode.backend() says which is active).
"""

import glob
import pathlib
import shutil
import subprocess
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext


def pkg_config(*args):
    if shutil.which("pkg-config") is None:
        return None
    try:
        out = subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True).stdout
    except subprocess.CalledProcessError:
        return None
    return out.split()


def decoder_extensions():
    sources = sorted(glob.glob("csrc/*.cpp"))
    if not sources:
        return []
    cflags = pkg_config("--cflags", "libjpeg", "libpng")
    libs = pkg_config("--libs", "libjpeg", "libpng")
    if cflags is None or libs is None:
        print(
            "fastpix: libjpeg/libpng not found by pkg-config; building without the C++ decoder (PIL serves)",
            file=sys.stderr,
        )
        return []
    from pybind11.setup_helpers import Pybind11Extension

    return [
        Pybind11Extension(
            "fastpix._decode", sources, cxx_std=17, extra_compile_args=["-O3", *cflags], extra_link_args=libs
        )
    ]


class OptionalBuildExt(build_ext):
    """Build the decoder if we can; never fail the install because of it."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler/linker failure means "use PIL"
            print(f"fastpix: C++ decoder not built ({exc}); PIL serves", file=sys.stderr)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - as in run(): any failure means "use PIL"
            print(f"fastpix: C++ decoder not built ({exc}); PIL serves", file=sys.stderr)


SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9", "prometheus-client>=0.20"]
# openvino: a peer in bench/cpu_compare.py (its f32 and bf16 rows beside fastpix's); fastpix itself never imports it.
BENCH = ["pytest", "pytest-benchmark", "openvino>=2024.0"]
ONNX = ["onnx>=1.16", "onnxscript>=0.1", "onnxruntime>=1.18"]
PLOT = ["matplotlib>=3.5"]

setup(
    name="fastpix",
    version="0.1.0",
    description="A fast engine for pix2pix: fused Triton kernels, CUDA-graph training, batched inference",
    long_description=pathlib.Path("README.md").read_text() if glob.glob("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["fastpix", "fastpix.*"]) + ["fastpix.kernels", "fastpix.bench_suites"],
    package_dir={"fastpix.kernels": "kernels", "fastpix.bench_suites": "bench/suites"},
    # The palettes --palette and --label-palette name (facades, demo) and the draw page of fastpix serve.
    package_data={"fastpix": ["palettes/*.json", "infer/server/static/*"]},
    ext_modules=decoder_extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    install_requires=[
        "torch>=2.11,<2.14",
        "triton>=3.6,<3.10",
        "numpy",
        "pillow",
        # safetensors: the checkpoint format (docs/design.md, "The run folder and the checkpoint transaction"):
        # no pickle, memory-mappable, read by other tools.
        "safetensors>=0.4",
        # tqdm: the progress bar users expect from a trainer; a well-kept, dependency-free library.
        "tqdm",
        # xxhash: the checkpoint manifest's file hash (xxh3-128), 12x sha256's speed: a save's hashing is CPU time
        # the background writer takes from training (fastpix/store/checkpoint_set.py, HASHES).
        "xxhash>=3",
    ],
    extras_require={
        "tensorboard": ["tensorboard"],
        # --use_wandb: Weights & Biases' own client (offline mode works without a network).
        "wandb": ["wandb"],
        # loss.png drawn by matplotlib (ticks, legends, twin axes done well) rather than by fastpix's PIL fallback.
        "plot": PLOT,
        # fastpix serve: FastAPI (routing, multipart parsing, lifespan) on uvicorn (HTTP/1.1, graceful shutdown on
        # SIGTERM); well-kept libraries rather than an HTTP stack of our own. python-multipart parses uploads;
        # prometheus-client writes /metrics, from a registry of each app's own.
        "serve": SERVE,
        # fastpix export --format onnx: torch.onnx's dynamo exporter needs onnx and onnxscript; onnxruntime checks
        # the exported file against PyTorch.
        "onnx": ONNX,
        # fastpix data edges: scikit-image's filters, thinning and labelling (with SciPy) for the reference's
        # edge post-processing.
        "edges": ["scikit-image"],
        # fastpix bench: the suites are pytest-benchmark files (pytest runs them, pytest-benchmark times and reports).
        "bench": BENCH,
        # selenium drives the system's chromium through its chromedriver in the study's browser tests;
        # import-linter (a well-kept layering checker) enforces docs/design.md's layers (tests/test_structure.py);
        # ruff lints and formats and mypy checks types there too. ruff's formatter changes its style between minor
        # versions, so the tree is formatted by one minor version: move the bound with a `ruff format` commit.
        "test": [
            *BENCH,
            "pybind11>=2.10",
            "scikit-image",
            "tensorboard",
            "selenium>=4.10",
            "import-linter>=2.0",
            "ruff>=0.17.6,<0.18",
            "mypy>=2.4",
            *SERVE,
            *ONNX,
            *PLOT,
        ],
    },
    entry_points={"console_scripts": ["fastpix=fastpix.cli:main"]},
)
