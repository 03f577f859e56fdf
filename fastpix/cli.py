"""The `fastpix` command. Flags come from the dataclasses in config.py (one place for every default).

Each option is offered with dashes (--batch-size) and with the reference's spelling (--batch_size), so a
reference user's command line runs unchanged. Options left unset keep their defaults, or, for `test` and for
`train --continue_train`, the values saved in the run's config.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from fastpix import __version__
from fastpix.config import DataConfig, EvalConfig, ModelConfig, PredictConfig, ServeConfig, TestConfig, TrainConfig

TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def add_config_args(parser: argparse.ArgumentParser, cls, title: str):
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        flags = [f"--{f.name}"]
        if "_" in f.name:
            flags.insert(0, f"--{f.name.replace('_', '-')}")
        flags += list(f.metadata.get("aliases", ()))
        kind = TYPES[str(f.type).split(" ")[0]]
        help_text = f"{f.metadata['help']} (default: {f.default})"
        if kind is bool and f.default is None:  # a tri-state: unset means "decide from the device"
            group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_text)
        elif kind is bool:
            group.add_argument(*flags, dest=f.name, action="store_true", default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(*flags, dest=f.name, type=kind, default=argparse.SUPPRESS,
                               choices=f.metadata.get("choices"), help=help_text,
                               metavar=f.name.upper() if not f.metadata.get("choices") else None)


def add_reference_args(parser: argparse.ArgumentParser):
    """Options of the reference's command lines that have one meaning in fastpix, accepted so they run unchanged."""
    group = parser.add_argument_group("accepted for reference command lines")
    group.add_argument("--model", choices=("pix2pix",), default=argparse.SUPPRESS,
                       help="the reference's model switch; fastpix is pix2pix (default: pix2pix)")
    group.add_argument("--dataset_mode", "--dataset-mode", choices=("aligned",), default=argparse.SUPPRESS,
                       help="aligned A|B files; fastpix also reads A/ and B/ folders without it (default: aligned)")
    group.add_argument("--gpu_ids", "--gpu-ids", default=argparse.SUPPRESS,
                       help="'-1' for the CPU, '0' for cuda:0; same as --device (default: cuda if available)")
    group.add_argument("--display_id", "--display-id", type=int, default=argparse.SUPPRESS,
                       help="ignored: fastpix writes samples and metrics.jsonl instead of a visdom display")
    group.add_argument("--pool_size", "--pool-size", type=int, choices=(0,), default=argparse.SUPPRESS,
                       help="image pool size; pix2pix uses none (default: 0)")


def apply_reference_args(given: dict):
    gpu_ids = given.get("gpu_ids")
    if gpu_ids is not None and "device" not in given:
        first = str(gpu_ids).split(",")[0].strip()
        given["device"] = "cpu" if first == "-1" else f"cuda:{first}"
    return given


def build_config(cls, *layers: dict):
    """cls's defaults, overridden by each layer of values in turn (saved config, then the command line)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for layer in layers:
        values.update({k: v for k, v in layer.items() if k in names})
    return cls(**values)


def saved_config(checkpoints_dir: str, name: str) -> dict:
    """The model and data sections of a run's config.json; {} for a reference checkpoints folder."""
    from fastpix.checkpoint import load_json

    path = os.path.join(checkpoints_dir, name, "config.json")
    if not os.path.isfile(path):
        return {}
    saved = load_json(path)
    return {**saved.get("data", {}), **saved.get("model", {})}


def demo_data_dir(size: int) -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "fastpix", f"demo_{size}")


def ensure_demo_data(size: int = 64) -> str:
    from fastpix.data.demo import write_demo_dataset

    folder = demo_data_dir(size)
    if not os.path.isfile(os.path.join(folder, "complete")):
        write_demo_dataset(folder, size)
        open(os.path.join(folder, "complete"), "w").close()
    return folder


def without_flag(argv: list[str], flag: str) -> list[str]:
    """argv less `flag VALUE` / `flag=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def prepare_backend(backend, device):
    """--backend triton without a CUDA device: switch Triton to its interpreter before the kernels load, and say so."""
    from fastpix.runtime import default_device

    if backend == "triton" and default_device(device).type != "cuda":
        from fastpix.runtime import use_triton_interpreter

        use_triton_interpreter()
        print("fastpix: --backend triton without a CUDA device runs the kernels in Triton's interpreter "
              "(TRITON_INTERPRET=1): correct but very slow, for checking; --backend eager is the CPU path")


def cmd_train(args):
    from fastpix.train.loop import train

    given = apply_reference_args(vars(args))
    train_cfg = build_config(TrainConfig, given)
    if train_cfg.nproc and train_cfg.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from fastpix.train.distributed import relaunch_with_torchrun

        code = relaunch_with_torchrun(train_cfg.nproc, without_flag(args.argv, "--nproc"))
        if code:
            raise SystemExit(code)
        return
    saved = saved_config(train_cfg.checkpoints_dir, train_cfg.name) if train_cfg.continue_train else {}
    model_cfg = build_config(ModelConfig, saved, given)
    data_cfg = build_config(DataConfig, saved, given)
    if data_cfg.dataroot is None:
        data_cfg.dataroot = ensure_demo_data()
        print(f"fastpix: no --dataroot given, training on the built-in demo data in {data_cfg.dataroot}")
    prepare_backend(model_cfg.backend, train_cfg.device)
    run_dir = train(model_cfg, data_cfg, train_cfg, overwrite=args.overwrite, progress=not args.quiet)
    print(f"fastpix: checkpoints in {run_dir}")


def cmd_test(args):
    from fastpix.infer.protocol import run_test

    given = apply_reference_args(vars(args))
    test_cfg = build_config(TestConfig, given)
    saved = saved_config(test_cfg.checkpoints_dir, test_cfg.name)
    model_cfg = build_config(ModelConfig, saved, given)
    data_cfg = build_config(DataConfig, saved, given)
    if data_cfg.dataroot is None:
        raise SystemExit("fastpix test: --dataroot is required (the run's config.json does not name one)")
    out = run_test(model_cfg, data_cfg, test_cfg)
    print(f"fastpix: results in {os.path.join(out, 'index.html')}")


def cmd_eval(args):
    """Score a checkpoint on a split (or saved results): L1, PSNR, SSIM, sharpness; optional baselines, FID/KID."""
    from fastpix import evaluate
    from fastpix.infer.protocol import find_generator_weights

    given = apply_reference_args(vars(args))
    cfg = build_config(EvalConfig, given)
    if cfg.results and cfg.checkpoint is None:
        run_dir, weights = os.path.join(cfg.checkpoints_dir, cfg.name), None
    else:
        run_dir, weights = find_generator_weights(cfg.checkpoint, cfg.checkpoints_dir, cfg.name, cfg.epoch)
    run_dir = os.path.normpath(run_dir)
    saved = saved_config(*os.path.split(run_dir))
    model_cfg, data_cfg = build_config(ModelConfig, saved, given), build_config(DataConfig, saved, given)
    if data_cfg.dataroot is None and not cfg.results:
        raise SystemExit("fastpix eval: --dataroot is required (the run's config.json does not name one)")
    report = evaluate.run_eval(model_cfg, data_cfg, cfg, weights, os.path.basename(run_dir))
    print(evaluate.format_report(report))
    if "page" in report:
        print(f"fastpix eval: results page {report['page']}")
    if cfg.json:
        evaluate.write_json(cfg.json, report)
        print(f"fastpix eval: report written to {cfg.json}")


def load_predictor(cfg, command: str, **options):
    """The Predictor an InferenceConfig describes; a bad checkpoint or flag ends the command with its message."""
    from fastpix.checkpoint import CheckpointError
    from fastpix.infer.predictor import ARCH_FIELDS, Predictor

    if cfg.checkpoint is None:
        raise SystemExit(f"fastpix {command}: error: --checkpoint is required (a run folder, a .safetensors or a "
                         "reference .pth)")
    arch = {k: getattr(cfg, k) for k in ARCH_FIELDS if getattr(cfg, k, None) is not None}
    prepare_backend(cfg.backend, cfg.device)
    try:
        return Predictor.from_checkpoint(cfg.checkpoint, cfg.device, cfg.precision, cfg.norm_mode, cfg.dropout,
                                         cfg.backend, epoch=cfg.epoch, runtime=cfg.runtime,
                                         cache_dir=cfg.compile_cache_dir, **options, **arch)
    except CheckpointError:
        raise
    except ImportError as exc:  # --runtime onnxruntime without the [onnx] extra
        raise SystemExit(f"fastpix {command}: error: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"fastpix {command}: error: {exc}") from exc


def cmd_predict(args):
    """Translate image files with a generator: each output is <output>/<input name>.png (images found in a folder
    keep their sub-folder). Unreadable files are reported and skipped, the others still written; the exit status
    is then 1 (0 when every file was translated)."""
    from fastpix.infer.predictor import collect_inputs, predict_files

    cfg = build_config(PredictConfig, vars(args))
    inputs = collect_inputs(args.input)
    if not inputs:
        raise SystemExit(f"fastpix predict: error: no images in {' '.join(args.input)}")
    predictor = load_predictor(cfg, "predict", max_batch_size=cfg.batch_size)
    written, failed = predict_files(predictor, [p for p, _ in inputs], args.output, cfg.batch_size,
                                    progress=not args.quiet, seed=cfg.seed, names=[n for _, n in inputs])
    for path, message in failed:
        print(f"fastpix predict: skipped {path}: {message}", file=sys.stderr)
    print(f"fastpix predict: {len(written)} images written to {args.output}"
          + (f"; {len(failed)} unreadable files skipped" if failed else "") + f" ({predictor.description})")
    if failed:
        raise SystemExit(1)


def cmd_serve(args):
    """Serve a generator over HTTP: POST /v1/translate (multipart field 'image', JSON {"image": base64} or a raw
    image body) answers the translated image (PNG, or JPEG by Accept); GET /healthz, /readyz, /metrics.
    Requests are batched dynamically by one worker thread that owns the model. Needs the 'serve' extra
    (pip install fastpix[serve]). SIGTERM / Ctrl-C: stop accepting, answer the requests in flight, exit."""
    try:
        from fastpix.infer.server import create_app, run
    except ImportError as exc:
        raise SystemExit(f"fastpix serve: error: {exc.name} is missing; install the server with "
                         "pip install 'fastpix[serve]'") from exc
    from fastpix.runtime import default_device

    cfg = build_config(ServeConfig, vars(args))
    device = default_device(cfg.device)
    graphs = device.type == "cuda" and cfg.graph_size > 0 and cfg.norm_mode != "batch" and not cfg.dropout
    predictor = load_predictor(cfg, "serve", max_batch_size=cfg.max_batch_size,
                               graph_size=(cfg.graph_size, cfg.graph_size) if graphs else None)
    try:
        app = create_app(predictor, cfg)
    except ValueError as exc:
        raise SystemExit(f"fastpix serve: error: {exc}") from exc
    print(f"fastpix serve: {cfg.checkpoint} ({predictor.description}"
          f"{', graphs at ' + str(cfg.graph_size) + '²' if graphs else ''}), "
          f"http://{cfg.host}:{cfg.port}/v1/translate", flush=True)
    run(app, cfg.host, cfg.port, graceful_timeout_s=cfg.timeout_s)


def cmd_data_demo(args):
    from fastpix.data.demo import write_demo_dataset

    write_demo_dataset(args.out, args.size, {"train": args.train, "val": args.val, "test": args.test}, args.seed)
    print(f"fastpix: demo data set written to {args.out} (train {args.train}, val {args.val}, test {args.test})")


def cmd_demo(args):
    """Generate the demo data, train on it (a few minutes on CPU), run the test protocol, print where it is."""
    import torch

    from fastpix.data.demo import write_demo_dataset
    from fastpix.infer.protocol import run_test
    from fastpix.train.loop import train

    gpu = torch.cuda.is_available()
    size = 256 if gpu else 64
    data = os.path.join(args.out, "data")
    write_demo_dataset(data, size)
    model_cfg = ModelConfig(netG="unet_256" if gpu else "unet_64", ngf=64 if gpu else 32, ndf=64 if gpu else 32)
    data_cfg = DataConfig(dataroot=data, load_size=286 if gpu else 72, crop_size=size)
    train_cfg = TrainConfig(name="demo", checkpoints_dir=os.path.join(args.out, "checkpoints"),
                            batch_size=1 if gpu else 4, n_epochs=args.epochs, n_epochs_decay=args.epochs,
                            print_freq=50, display_freq=200, save_epoch_freq=max(1, args.epochs),
                            gan_mode=args.gan_mode)
    train(model_cfg, data_cfg, train_cfg, overwrite=True)
    test_cfg = TestConfig(name="demo", checkpoints_dir=train_cfg.checkpoints_dir,
                          results_dir=os.path.join(args.out, "results"), num_test=40)
    out = run_test(model_cfg, data_cfg, test_cfg)
    print(f"fastpix demo: checkpoints in {os.path.join(train_cfg.checkpoints_dir, 'demo')}")
    print(f"fastpix demo: results page {os.path.join(out, 'index.html')}")


def export_source(args) -> str:
    if args.checkpoint:
        return args.checkpoint
    if args.name:
        return os.path.join(args.checkpoints_dir, args.name)
    raise SystemExit("fastpix export: error: give --name (a run under --checkpoints-dir) or --checkpoint")


def cmd_export_onnx(args):
    from fastpix.checkpoint import CheckpointError
    from fastpix.export import check_onnx, export_onnx, size_multiple
    from fastpix.infer.predictor import load_generator

    source = export_source(args)
    stem = os.path.splitext(os.path.basename(source))[0] if os.path.isfile(source) else f"{args.epoch}_net_G"
    target = os.path.join(args.out, f"{stem}.onnx")
    try:
        generator = load_generator(source, args.epoch)
        net = export_onnx(generator, target, args.norm_mode)
    except CheckpointError:
        raise
    except (ImportError, ValueError, TypeError) as exc:
        raise SystemExit(f"fastpix export: error: {exc}") from exc
    print(f"fastpix: wrote {target} (norm_mode {args.norm_mode}; N×C×H×W float32 in [-1, 1], H and W multiples of "
          f"{size_multiple(generator)})")
    try:
        worst = check_onnx(target, net)
    except ImportError:
        print("fastpix: onnxruntime is not installed, so the file was not checked against PyTorch")
        return
    print(f"fastpix: onnxruntime agrees with PyTorch to {worst:.2e} (largest absolute difference)")


def cmd_export(args):
    """pth: the run's G (and D) as the reference's plain state dicts. onnx: the generator as an ONNX graph (the eager
    network in --norm-mode instance or running, dropout off, dynamic batch and size), checked against PyTorch with
    onnxruntime when it is installed."""
    from fastpix import checkpoint as ckpt

    if args.format == "onnx":
        return cmd_export_onnx(args)
    run_dir = export_source(args)
    os.makedirs(args.out, exist_ok=True)
    if os.path.isfile(run_dir):
        target = os.path.join(args.out, os.path.splitext(os.path.basename(run_dir))[0] + ".pth")
        ckpt.save_weights(target, ckpt.load_weights(run_dir))
        print(f"fastpix: wrote {target}")
        return
    for net in ("G", "D"):
        try:
            source = ckpt.find_weights(run_dir, args.epoch, net)
        except ckpt.CheckpointError:
            if net == "D":
                continue  # a generator-only folder (as the reference's pretrained models are) exports just G
            raise
        target = os.path.join(args.out, f"{args.epoch}_net_{net}.pth")
        ckpt.save_weights(target, ckpt.load_weights(source))
        print(f"fastpix: wrote {target}")


def cmd_info(args):
    import torch
    import triton

    from fastpix.data.decode import backend as decode_backend

    print(f"fastpix {__version__}")
    print(f"torch {torch.__version__}, triton {triton.__version__}, cuda available: {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
    from fastpix import runtime

    cpu_precision = runtime.resolve_precision(None, "cpu")
    print(f"cpu: {runtime.cpu_features()} (native bf16: {'yes' if runtime.cpu_has_native_bf16() else 'no'}); "
          f"on the cpu fastpix trains in {cpu_precision} and predicts in {cpu_precision} with runtime compiled "
          "(inductor, frozen weights, channels-last; eager for norm_mode batch or dropout)")
    print(f"image decoder: {decode_backend()}"
          + ("" if decode_backend() == "native" else " (the C++ decoder was not built: libjpeg/libpng headers "
             "missing at install time)"))


def cmd_bench(args):
    from fastpix import bench

    if args.layers:
        from fastpix.kernels.conv_layers import layer_table

        try:
            print(layer_table())
        except RuntimeError as exc:
            raise SystemExit(f"fastpix bench --layers: {exc}") from exc
        return
    try:
        code = bench.run(args.suite, args.json, args.select, args.cpu_config)
    except FileNotFoundError as exc:
        raise SystemExit(f"fastpix bench: {exc}") from exc
    if os.path.isfile(args.json):
        print(bench.table(args.json))
        print(f"fastpix bench: results in {args.json}")
    if code:
        raise SystemExit(code)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="fastpix", description="pix2pix, fast: train, test and export.")
    parser.add_argument("--version", action="version", version=f"fastpix {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train pix2pix (with no --dataroot: on the built-in demo data)",
                       formatter_class=fmt, description=cmd_train.__doc__)
    add_config_args(p, ModelConfig, "model")
    add_config_args(p, DataConfig, "data")
    add_config_args(p, TrainConfig, "training")
    add_reference_args(p)
    p.add_argument("--overwrite", action="store_true", help="start afresh over an existing run of --name "
                   "(default: refuse, so that no run is lost by accident)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: show it)")
    p.set_defaults(func=cmd_train, overwrite=False, quiet=False)

    p = sub.add_parser("test", help="run the test protocol over a split and write a results page",
                       formatter_class=fmt)
    add_config_args(p, ModelConfig, "model (default: from the run's config.json)")
    add_config_args(p, DataConfig, "data (default: from the run's config.json)")
    add_config_args(p, TestConfig, "test")
    add_reference_args(p)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("eval", help="score a checkpoint (or saved results) on a split: L1, PSNR, SSIM, sharpness",
                       formatter_class=fmt, description=cmd_eval.__doc__)
    add_config_args(p, ModelConfig, "model (default: from the run's config.json)")
    add_config_args(p, DataConfig, "data (default: from the run's config.json)")
    add_config_args(p, EvalConfig, "evaluation")
    add_reference_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="translate image files or folders with a checkpoint (any image size)",
                       formatter_class=fmt, description=cmd_predict.__doc__)
    p.add_argument("--input", nargs="+", required=True, metavar="DIR_OR_FILE",
                   help="image files and/or folders (searched recursively) (required)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the translated images (required)")
    add_config_args(p, PredictConfig, "prediction")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: show it)")
    p.set_defaults(func=cmd_predict, quiet=False)

    p = sub.add_parser("serve", help="serve a checkpoint over HTTP with dynamic batching (the 'serve' extra)",
                       formatter_class=fmt, description=cmd_serve.__doc__)
    add_config_args(p, ServeConfig, "server")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("data", help="data sets: `fastpix data demo --out DIR` writes the built-in demo set")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="WHAT")
    d = data_sub.add_parser("demo", help="write the built-in demo data set (aligned A|B, train/val/test)")
    d.add_argument("--out", required=True, help="folder to write (required)")
    d.add_argument("--size", type=int, default=64, help="side of each image half in pixels (default: 64)")
    d.add_argument("--train", type=int, default=400, help="training pairs (default: 400)")
    d.add_argument("--val", type=int, default=40, help="validation pairs (default: 40)")
    d.add_argument("--test", type=int, default=40, help="test pairs (default: 40)")
    d.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    d.set_defaults(func=cmd_data_demo)

    p = sub.add_parser("demo", help="generate the demo data, train, test, and say where the results are")
    p.add_argument("--out", default="demo_out", help="folder for data, checkpoints and results (default: demo_out)")
    p.add_argument("--epochs", type=int, default=5,
                   help="epochs at full learning rate, then as many decaying (default: 5)")
    p.add_argument("--gan_mode", "--gan-mode", choices=("vanilla", "lsgan", "none"), default=TrainConfig.gan_mode,
                   help=f"GAN objective; none = the L1-only baseline (default: {TrainConfig.gan_mode})")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("export", help="write a run's weights as reference-loadable .pth state dicts, or the "
                       "generator as ONNX", formatter_class=fmt, description=cmd_export.__doc__)
    p.add_argument("--format", choices=("pth", "onnx"), default="pth", help="output format (default: pth)")
    p.add_argument("--name", help="run name (required unless --checkpoint is given)")
    p.add_argument("--checkpoint", help="a run folder or a weights file, instead of --name (default: none)")
    p.add_argument("--norm-mode", "--norm_mode", dest="norm_mode", choices=("instance", "running"),
                   default="instance", help="onnx: BatchNorm as per-image statistics (the paper's protocol at "
                   "batch 1) or folded running statistics (default: instance)")
    p.add_argument("--checkpoints-dir", "--checkpoints_dir", dest="checkpoints_dir", default="./checkpoints",
                   help="where the run is (default: ./checkpoints)")
    p.add_argument("--epoch", default="latest", help="which checkpoint (default: latest)")
    p.add_argument("--out", required=True, help="folder to write into: <epoch>_net_{G,D}.pth, or the .onnx file (required)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("info", help="versions, devices and the active image decoder")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="benchmark fastpix against eager PyTorch on this machine")
    p.add_argument("--suite", nargs="+", default=["train"], choices=("train", "kernels", "data", "infer"),
                   help="which suites of bench/ to run (default: train)")
    p.add_argument("--json", default="fastpix-bench.json", help="where to write the results (default: "
                   "fastpix-bench.json)")
    p.add_argument("--select", default=None, help="only cases whose name matches this pytest -k expression (default: all)")
    p.add_argument("--cpu-config", default="reduced", choices=("reduced", "real"),
                   help="on a CPU: reduced (small models) or real (unet_256 ngf 64 at 256², few rounds) (default: "
                   "reduced)")
    p.add_argument("--layers", action="store_true", help="instead: per pix2pix conv layer (batch 1/16/64, bf16), "
                   "the fused Triton block vs cuDNN and which one backend triton uses (measured once, cached)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv=None) -> int:
    from fastpix.checkpoint import CheckpointError
    from fastpix.data.dataset import DataError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        args.func(args)
    except (DataError, CheckpointError) as exc:
        print(f"fastpix {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"fastpix {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return 130
    return 0
