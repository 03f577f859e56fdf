"""`fastpix predict`, `serve` and `export`: a trained generator put to use."""

from __future__ import annotations

import os
import sys

from fastpix.cli.console import note
from fastpix.cli.flags import QUIET_HELP, build_config, subcommand
from fastpix.cli.run_setup import prepare_backend
from fastpix.config import ExportConfig, PredictConfig, ServeConfig
from fastpix.errors import ConfigError, DataError, MissingDependency


def load_predictor(args, cfg, **options):
    """The Predictor an InferenceConfig describes."""
    from fastpix.infer.predictor import Predictor
    from fastpix.store.architecture import ARCH_FIELDS

    arch = {k: getattr(cfg, k) for k in ARCH_FIELDS if getattr(cfg, k, None) is not None}
    prepare_backend(args, cfg.backend, cfg.device)
    return Predictor.from_checkpoint(
        cfg.checkpoint,
        cfg.device,
        cfg.precision,
        cfg.norm_mode,
        cfg.dropout,
        cfg.backend,
        epoch=cfg.epoch,
        runtime=cfg.runtime,
        cache_dir=cfg.compile_cache_dir,
        cache_max_gb=cfg.compile_cache_max_gb,
        max_loaded_packages=cfg.max_loaded_packages,
        model=cfg.model,
        **options,
        **arch,
    )


def cmd_predict(args):
    """Translate image files with a generator: each output is <output>/<input name>.png (images found in a folder
    keep their sub-folder). Unreadable files are reported and skipped, the others still written; the exit status
    is then 1 (0 when every file was translated)."""
    from fastpix.infer.image_files import collect_inputs, predict_files

    cfg = build_config(PredictConfig, vars(args))
    inputs = collect_inputs(args.input)
    if not inputs:
        raise DataError(f"no images in {' '.join(args.input)}")
    predictor = load_predictor(args, cfg, max_batch_size=cfg.batch_size, images=len(inputs))
    try:  # with the compiled runtime, batches run eagerly until their packages are built in the background
        written, failed = predict_files(
            predictor,
            [p for p, _ in inputs],
            args.output,
            cfg.batch_size,
            progress=not args.quiet,
            seed=cfg.seed,
            names=[n for _, n in inputs],
        )
    finally:
        predictor.close()
    for path, message in failed:
        print(f"fastpix predict: skipped {path}: {message}", file=sys.stderr)
    print(
        f"fastpix predict: {len(written)} images written to {args.output}"
        + (f"; {len(failed)} unreadable files skipped" if failed else "")
        + f" ({predictor.description})"
    )
    return 1 if failed else 0


def cmd_serve(args):
    """Serve a generator over HTTP: POST /v1/translate (multipart field 'image', JSON {"image": base64} or a raw
    image body) answers the translated image (PNG, or JPEG by Accept); GET /healthz, /readyz, /metrics. GET / is
    the draw page: draw (--palette: with label colours), upload or pick an example (--examples) and see the
    translation live.
    Requests are batched dynamically by one worker thread that owns the model. Needs the 'serve' extra
    (pip install fastpix[serve]). SIGTERM / Ctrl-C: stop accepting, answer the requests in flight, exit."""
    try:
        from fastpix.infer.server import create_app, run
    except ImportError as exc:
        raise MissingDependency(exc.name or "fastapi", "serve", "fastpix serve") from exc
    from fastpix.store.generator import locate_generator

    cfg = build_config(ServeConfig, vars(args))
    # The graph size asked for; whether CUDA graphs run is the predictor's plan, and its description says it.
    predictor = load_predictor(
        args,
        cfg,
        max_batch_size=cfg.max_batch_size,
        graph_size=(cfg.graph_size, cfg.graph_size) if cfg.graph_size > 0 else None,
    )
    # ConfigError for --norm-mode batch or a canvas over --max-pixels; DataError for --palette, --examples.
    app = create_app(predictor, cfg, locate_generator(cfg.checkpoint, tag=cfg.epoch))
    url = f"http://{cfg.host}:{cfg.port}"
    print(
        f"fastpix serve: {cfg.checkpoint} ({predictor.description}), {url}/v1/translate; the draw page: {url}/",
        flush=True,
    )
    run(app, cfg.host, cfg.port, graceful_timeout_s=cfg.timeout_s)


def parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"--image-size {text!r}: give HxW (e.g. 256x256) or one side (256)")
    return (int(parts[0]), int(parts[-1]))


def export_onnx(args, cfg: ExportConfig, source):
    from fastpix.export import check_onnx, export_onnx, size_multiple

    target = os.path.join(cfg.out, f"{source.stem}.onnx")
    generator = source.load()
    print("fastpix export: exporting the generator to ONNX (seconds)", flush=True)
    try:
        net = export_onnx(generator, target, cfg.norm_mode)
    except ImportError as exc:
        raise MissingDependency("onnx and onnxscript", "onnx", "export --format onnx") from exc
    print(
        f"fastpix export: wrote {target} (norm_mode {cfg.norm_mode}; N×C×H×W float32 in [-1, 1], H and W "
        f"multiples of {size_multiple(generator)})"
    )
    try:
        worst = check_onnx(target, net)
    except ImportError:
        note(args, "onnxruntime is not installed, so the file was not checked against PyTorch")
        return
    print(f"fastpix export: onnxruntime agrees with PyTorch to {worst:.2e} (largest absolute difference)")


def export_package(args, cfg: ExportConfig, source):
    from fastpix.export import export_package
    from fastpix.runtime import resolve_precision

    size = parse_size(cfg.image_size)
    if cfg.precision not in (None, "fp32", "bf16"):
        raise ConfigError(f"--precision {cfg.precision!r}: a CPU package is fp32 or bf16")
    precision = resolve_precision(cfg.precision, "cpu")
    target = os.path.join(cfg.out, f"{source.stem}_{cfg.batch_size}x{size[0]}x{size[1]}_{precision}.pt2")
    print(
        f"fastpix export: compiling the generator for {cfg.batch_size}×C×{size[0]}×{size[1]} {precision} with "
        "AOTInductor (tens of seconds to minutes)",
        flush=True,
    )
    error = export_package(source.load(), target, cfg.norm_mode, cfg.batch_size, size, precision)
    print(
        f"fastpix export: wrote {target} (norm_mode {cfg.norm_mode}; {cfg.batch_size}×C×{size[0]}×{size[1]} "
        f"{precision} channels-last in [-1, 1], for this CPU; load with torch._inductor.aoti_load_package)"
    )
    print(f"fastpix export: the package agrees with eager fp32 PyTorch to {error:.2e} (relative)")


def export_reference(args, cfg: ExportConfig, source):
    from fastpix.export import export_pth

    for target in export_pth(source, cfg.epoch, cfg.out):
        print(f"fastpix export: wrote {target}")


EXPORTS = {"pth": export_reference, "onnx": export_onnx, "pt2": export_package}


def cmd_export(args):
    """pth: the run's G (and D) as the reference's plain state dicts. onnx: the generator as an ONNX graph (the eager
    network in --norm-mode instance or running, dropout off, dynamic batch and size), checked against PyTorch with
    onnxruntime when it is installed. pt2: the generator as an AOTInductor package for this CPU (one --batch-size,
    --image-size and --precision), checked against eager PyTorch."""
    from fastpix.store.generator import locate_generator

    cfg = build_config(ExportConfig, vars(args))
    EXPORTS[cfg.format](args, cfg, locate_generator(cfg.checkpoint, cfg.checkpoints_dir, cfg.name, cfg.epoch))


def register(sub):
    p = subcommand(
        sub,
        "predict",
        cmd_predict,
        "translate image files or folders with a checkpoint (any image size)",
        (PredictConfig, "prediction"),
        quiet=QUIET_HELP,
    )
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="DIR_OR_FILE",
        help="image files and/or folders (searched recursively) (required)",
    )
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the translated images (required)")
    subcommand(
        sub,
        "serve",
        cmd_serve,
        "serve a checkpoint over HTTP with dynamic batching (the 'serve' extra)",
        (ServeConfig, "server"),
    )
    subcommand(
        sub,
        "export",
        cmd_export,
        "write a run's weights as reference-loadable .pth state dicts, or the "
        "generator as ONNX or an AOTInductor package",
        (ExportConfig, "export"),
    )
