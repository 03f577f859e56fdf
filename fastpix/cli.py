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
import time

from fastpix import __version__
from fastpix.config import (MINIMUM, BenchConfig, DataConfig, DemoConfig, DemoDataConfig, EvalConfig, ExportConfig,
                            ModelConfig, PredictConfig, ReferenceConfig, ReferenceDisplayConfig, ReferenceTestConfig,
                            ServeConfig, TestConfig, TrainConfig, demo_configs, user_cache_dir)

TYPES = {"int": int, "float": float, "str": str, "bool": bool, "tuple": str}
FORMATTER = argparse.RawDescriptionHelpFormatter
RANK_EXIT_DELAY_S = 3.0
DEBUG_HELP = "on an error, show its traceback (default: one line naming the problem; FASTPIX_DEBUG=1 does the same)"
DISPLAY_TITLE = ("the reference's visdom/HTML display, accepted and ignored: fastpix writes <run>/samples/, "
                 "<run>/loss.png, <run>/metrics.jsonl and, with --tensorboard, TensorBoard logs")


def at_least(kind, name: str):
    """kind, refusing values below MINIMUM[name] with the flag's own error line."""
    def parse(text):
        value = kind(text)
        if value < MINIMUM[name]:
            raise argparse.ArgumentTypeError(f"{text} is below the smallest value it takes, {MINIMUM[name]}")
        return value
    parse.__name__ = kind.__name__  # argparse names it in "invalid int value"
    return parse


def help_of(f) -> str:
    text = f.metadata["help"]
    if f.metadata.get("required"):
        return f"{text} (required)"
    if "(default:" in text:
        return text
    default = " ".join(f.default) if isinstance(f.default, tuple) else (f.default if f.default != "" else "''")
    return f"{text} (default: {default})"


def add_config_args(parser: argparse.ArgumentParser, cls, title: str):
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        flags = [f"--{f.name}"]
        if "_" in f.name:
            flags.insert(0, f"--{f.name.replace('_', '-')}")
        flags += list(f.metadata.get("aliases", ()))
        kind = TYPES[str(f.type).split(" ")[0]]
        if kind is bool and f.default is None:  # a tri-state: unset means "decide from the device"
            group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_of(f))
        elif kind is bool:
            group.add_argument(*flags, dest=f.name, action="store_true", default=argparse.SUPPRESS, help=help_of(f))
        else:
            choices = f.metadata.get("choices")
            group.add_argument(*flags, dest=f.name, type=at_least(kind, f.name) if f.name in MINIMUM else kind,
                               default=argparse.SUPPRESS, choices=choices, nargs=f.metadata.get("nargs"),
                               required=f.metadata.get("required", False), help=help_of(f),
                               metavar=None if choices else f.name.upper())


def apply_reference_args(given: dict):
    gpu_ids = given.get("gpu_ids")
    if gpu_ids is not None and "device" not in given:
        ids = [i.strip() for i in str(gpu_ids).split(",") if i.strip()]
        given["device"] = "cpu" if not ids or ids[0] == "-1" else f"cuda:{ids[0]}"
        if len(ids) > 1 and is_main_process():
            print(f"fastpix: --gpu_ids {gpu_ids}: fastpix runs on cuda:{ids[0]}; for {len(ids)} GPUs, one process "
                  f"each, use --nproc {len(ids)} (with CUDA_VISIBLE_DEVICES={gpu_ids} to choose them)")
    return given


def build_config(cls, *layers: dict):
    """cls's defaults, overridden by each layer of values in turn (saved config, then the command line)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for layer in layers:
        values.update({k: v for k, v in layer.items() if k in names})
    return cls(**values)


def demo_data_dir(size: int) -> str:
    return os.path.join(user_cache_dir(), f"demo_{size}")


def ensure_demo_data(size: int = DemoDataConfig.size) -> str:
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


def refuse_single_images(ref: ReferenceConfig, command: str):
    """The reference's --model test / --dataset_mode single translate images that have no target: `fastpix
    predict` does that (any size, the paper's per-image statistics by default)."""
    if ref.model == "test" or ref.dataset_mode == "single":
        flag = "--model test" if ref.model == "test" else "--dataset_mode single"
        raise SystemExit(f"fastpix {command}: error: {flag} translates images without targets: use fastpix predict "
                         "--checkpoint <checkpoints_dir>/<name> --input <images> --output <folder>")


def check_crop(model_cfg, data_cfg):
    """A U-Net halves its input num_downs times, so a fixed crop must be a multiple of 2**num_downs: otherwise the
    first forward fails, after the cache was built. Say it first, in one line."""
    from fastpix.models import unet_num_downs

    downs = unet_num_downs(model_cfg.netG)
    if downs and data_cfg.preprocess in ("resize_and_crop", "crop") and data_cfg.crop_size % 2 ** downs:
        raise ValueError(f"--netG {model_cfg.netG} takes images whose sides are multiples of {2 ** downs}: "
                         f"--crop_size {data_cfg.crop_size} is not (or use a smaller U-Net)")


def is_main_process() -> bool:
    """False on the ranks > 0 of a torchrun launch: what all ranks would say, rank 0 says once."""
    return os.environ.get("RANK", "0") == "0"


def suffixed_name(name: str, suffix: str, *configs) -> str:
    """The reference's --suffix: <name>_<suffix formatted with the options>."""
    if not suffix:
        return name
    values = {k: v for cfg in configs for k, v in dataclasses.asdict(cfg).items()}
    try:
        return f"{name}_{suffix.format(**values)}"
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"--suffix {suffix!r}: {exc} is not an option of this command (write e.g. "
                         "{netG}_size{load_size})") from exc


def print_networks(model_cfg, nets=("G", "D")):
    """--verbose: each network and its parameter count, as the reference prints them (built on the meta device:
    no memory, no time)."""
    import torch

    from fastpix.models import build_models

    with torch.device("meta"):
        built = dict(zip(("G", "D"), build_models(model_cfg, backend="eager")))
    print("---------- Networks initialized -------------")
    for name in nets:
        print(built[name])
        count = sum(p.numel() for p in built[name].parameters())
        print(f"[Network {name}] Total number of parameters : {count / 1e6:.3f} M")
    print("-----------------------------------------------")


def note_reference_display(given: dict):
    flags = [f"--{f.name}" for f in dataclasses.fields(ReferenceDisplayConfig) if f.name in given]
    if flags and is_main_process():
        print(f"fastpix train: {', '.join(flags)}: the reference's visdom/HTML display, ignored; fastpix writes "
              "sample grids to <run>/samples/ and the loss plot <run>/loss.png every --display_freq iterations, "
              "losses to <run>/metrics.jsonl every --print_freq, and TensorBoard logs with --tensorboard")


def check_launch(train_cfg, given: dict):
    """Refuse a multi-process launch that every rank would fail later, before any work: once, in one line."""
    import torch

    from fastpix.train.distributed import check_world, launch_world_size

    world_size = launch_world_size(train_cfg.nproc)
    cuda = torch.cuda.is_available() and not str(train_cfg.device or "cuda").startswith("cpu")
    try:
        check_world(train_cfg.batch_size, world_size, given.get("norm"), cuda)
    except ValueError:
        if not is_main_process():  # rank 0 says it; torchrun kills the others once one exits, so leave it time
            time.sleep(RANK_EXIT_DELAY_S)
            raise SystemExit(2) from None
        raise


def cmd_train(args):
    from fastpix.checkpoint import saved_config
    from fastpix.train.loop import train

    given = apply_reference_args(vars(args))
    train_cfg = build_config(TrainConfig, given)
    check_launch(train_cfg, given)
    if train_cfg.nproc and train_cfg.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from fastpix.train.distributed import relaunch_with_torchrun

        code = relaunch_with_torchrun(train_cfg.nproc, without_flag(args.argv, "--nproc"))
        if code:
            raise SystemExit(code)
        return
    ref = build_config(ReferenceConfig, given)
    refuse_single_images(ref, "train")
    note_reference_display(given)
    train_cfg.name = suffixed_name(train_cfg.name, ref.suffix, build_config(ModelConfig, given),
                                   build_config(DataConfig, given), train_cfg, ref)
    saved = saved_config(os.path.join(train_cfg.checkpoints_dir, train_cfg.name)) if train_cfg.continue_train else {}
    model_cfg = build_config(ModelConfig, saved, given)
    data_cfg = build_config(DataConfig, saved, given)
    if data_cfg.dataroot is None:
        data_cfg.dataroot = ensure_demo_data()
        print(f"fastpix: no --dataroot given, training on the built-in demo data in {data_cfg.dataroot}")
    check_crop(model_cfg, data_cfg)
    if ref.verbose and is_main_process():
        print_networks(model_cfg)
    prepare_backend(model_cfg.backend, train_cfg.device)
    run_dir = train(model_cfg, data_cfg, train_cfg, overwrite=args.overwrite, progress=not args.quiet)
    if is_main_process():
        print(f"fastpix: checkpoints in {run_dir}")


def cmd_test(args):
    from fastpix.checkpoint import saved_config
    from fastpix.evaluate import run_test

    given = apply_reference_args(vars(args))
    test_cfg = build_config(TestConfig, given)
    ref, ref_test = build_config(ReferenceConfig, given), build_config(ReferenceTestConfig, given)
    refuse_single_images(ref, "test")
    test_cfg.name = suffixed_name(test_cfg.name, ref.suffix, build_config(ModelConfig, given),
                                  build_config(DataConfig, given), test_cfg, ref, ref_test)
    saved = saved_config(os.path.join(test_cfg.checkpoints_dir, test_cfg.name))
    model_cfg = build_config(ModelConfig, saved, given)
    data_cfg = build_config(DataConfig, saved, given)
    if data_cfg.dataroot is None:
        raise SystemExit("fastpix test: --dataroot is required (the run's config.json does not name one)")
    check_crop(model_cfg, data_cfg)
    if ref.verbose:
        print_networks(model_cfg, ("G",))
    out = run_test(model_cfg, data_cfg, test_cfg, build_config(ReferenceDisplayConfig, given).display_winsize,
                   ref_test.aspect_ratio)
    print(f"fastpix: results in {os.path.join(out, 'index.html')}")


def cmd_eval(args):
    """Score a checkpoint on a split (or saved results): L1, PSNR, SSIM, sharpness; optional baselines, FID/KID."""
    from fastpix import evaluate
    from fastpix.checkpoint import find_generator_weights, saved_config

    given = apply_reference_args(vars(args))
    ref = build_config(ReferenceConfig, given)
    refuse_single_images(ref, "eval")
    cfg = build_config(EvalConfig, given)
    cfg.name = suffixed_name(cfg.name, ref.suffix, build_config(ModelConfig, given), build_config(DataConfig, given),
                             cfg, ref)
    if cfg.results and cfg.checkpoint is None:
        run_dir, weights = os.path.join(cfg.checkpoints_dir, cfg.name), None
    else:
        run_dir, weights = find_generator_weights(cfg.checkpoint, cfg.checkpoints_dir, cfg.name, cfg.weights_tag())
    run_dir = os.path.normpath(run_dir)
    saved = saved_config(run_dir)
    model_cfg, data_cfg = build_config(ModelConfig, saved, given), build_config(DataConfig, saved, given)
    if data_cfg.dataroot is None and not cfg.results:
        raise SystemExit("fastpix eval: --dataroot is required (the run's config.json does not name one)")
    if ref.verbose and weights is not None:
        print_networks(model_cfg, ("G",))
    report = evaluate.run_eval(model_cfg, data_cfg, cfg, weights, os.path.basename(run_dir))
    print(evaluate.format_report(report))
    if "page" in report:
        print(f"fastpix eval: results page {report['page']}")
    if cfg.json:
        evaluate.write_json(cfg.json, report)
        print(f"fastpix eval: report written to {cfg.json}")


def load_predictor(cfg, command: str, **options):
    """The Predictor an InferenceConfig describes; a bad checkpoint or flag ends the command with its message."""
    from fastpix.checkpoint import ARCH_FIELDS, CheckpointError
    from fastpix.infer.predictor import Predictor

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
    predictor = load_predictor(cfg, "predict", max_batch_size=cfg.batch_size, images=len(inputs))
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

    cfg = build_config(DemoDataConfig, vars(args))
    write_demo_dataset(cfg.out, cfg.size, {"train": cfg.train, "val": cfg.val, "test": cfg.test}, cfg.seed)
    print(f"fastpix: demo data set written to {cfg.out} (train {cfg.train}, val {cfg.val}, test {cfg.test})")


def cmd_demo(args):
    """Generate the demo data, train on it (a few minutes on CPU), run the test protocol, print where it is."""
    import torch

    from fastpix.data.demo import write_demo_dataset
    from fastpix.evaluate import run_test
    from fastpix.train.loop import train

    model_cfg, data_cfg, train_cfg, test_cfg = demo_configs(build_config(DemoConfig, vars(args)),
                                                            torch.cuda.is_available())
    write_demo_dataset(data_cfg.dataroot, data_cfg.crop_size)
    train(model_cfg, data_cfg, train_cfg, overwrite=True)
    out = run_test(model_cfg, data_cfg, test_cfg)
    print(f"fastpix demo: checkpoints in {os.path.join(train_cfg.checkpoints_dir, 'demo')}")
    print(f"fastpix demo: results page {os.path.join(out, 'index.html')}")


def export_source(cfg: ExportConfig) -> tuple[str, str]:
    """(the run folder or weights file to export, the stem of the files written from it)."""
    from fastpix.checkpoint import run_source

    source = run_source(cfg.checkpoint, cfg.checkpoints_dir, cfg.name)
    return source, os.path.splitext(os.path.basename(source))[0] if os.path.isfile(source) else f"{cfg.epoch}_net_G"


def cmd_export_onnx(cfg: ExportConfig):
    from fastpix.checkpoint import CheckpointError, load_generator
    from fastpix.export import check_onnx, export_onnx, size_multiple

    source, stem = export_source(cfg)
    target = os.path.join(cfg.out, f"{stem}.onnx")
    try:
        generator = load_generator(source, cfg.epoch)
        net = export_onnx(generator, target, cfg.norm_mode)
    except CheckpointError:
        raise
    except (ImportError, ValueError, TypeError) as exc:
        raise SystemExit(f"fastpix export: error: {exc}") from exc
    print(f"fastpix: wrote {target} (norm_mode {cfg.norm_mode}; N×C×H×W float32 in [-1, 1], H and W multiples of "
          f"{size_multiple(generator)})")
    try:
        worst = check_onnx(target, net)
    except ImportError:
        print("fastpix: onnxruntime is not installed, so the file was not checked against PyTorch")
        return
    print(f"fastpix: onnxruntime agrees with PyTorch to {worst:.2e} (largest absolute difference)")


def parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--image-size {text!r}: give HxW (e.g. 256x256) or one side (256)")
    return (int(parts[0]), int(parts[-1]))


def cmd_export_package(cfg: ExportConfig):
    from fastpix.checkpoint import load_generator
    from fastpix.export import export_package
    from fastpix.runtime import resolve_precision

    source, stem = export_source(cfg)
    size = parse_size(cfg.image_size)
    if cfg.precision not in (None, "fp32", "bf16"):
        raise ValueError(f"--precision {cfg.precision!r}: a CPU package is fp32 or bf16")
    precision = resolve_precision(cfg.precision, "cpu")
    target = os.path.join(cfg.out, f"{stem}_{cfg.batch_size}x{size[0]}x{size[1]}_{precision}.pt2")
    generator = load_generator(source, cfg.epoch)
    error = export_package(generator, target, cfg.norm_mode, cfg.batch_size, size, precision)
    print(f"fastpix: wrote {target} (norm_mode {cfg.norm_mode}; {cfg.batch_size}×C×{size[0]}×{size[1]} {precision} "
          f"channels-last in [-1, 1], for this CPU; load with torch._inductor.aoti_load_package)")
    print(f"fastpix: the package agrees with eager fp32 PyTorch to {error:.2e} (relative)")


def cmd_export(args):
    """pth: the run's G (and D) as the reference's plain state dicts. onnx: the generator as an ONNX graph (the eager
    network in --norm-mode instance or running, dropout off, dynamic batch and size), checked against PyTorch with
    onnxruntime when it is installed. pt2: the generator as an AOTInductor package for this CPU (one --batch-size,
    --image-size and --precision), checked against eager PyTorch."""
    from fastpix import checkpoint as ckpt

    cfg = build_config(ExportConfig, vars(args))
    if cfg.format == "onnx":
        return cmd_export_onnx(cfg)
    if cfg.format == "pt2":
        return cmd_export_package(cfg)
    run_dir = ckpt.run_source(cfg.checkpoint, cfg.checkpoints_dir, cfg.name)
    os.makedirs(cfg.out, exist_ok=True)
    if os.path.isfile(run_dir):
        target = os.path.join(cfg.out, os.path.splitext(os.path.basename(run_dir))[0] + ".pth")
        ckpt.save_weights(target, ckpt.load_weights(run_dir))
        print(f"fastpix: wrote {target}")
        return
    for net in ("G", "D"):
        try:
            source = ckpt.find_weights(run_dir, cfg.epoch, net)
        except ckpt.CheckpointError:
            if net == "D":
                continue  # a generator-only folder (as the reference's pretrained models are) exports just G
            raise
        target = os.path.join(cfg.out, f"{cfg.epoch}_net_{net}.pth")
        ckpt.save_weights(target, ckpt.load_weights(source))
        print(f"fastpix: wrote {target}")


def cmd_info(args):
    import torch
    import triton

    from fastpix.data.decode import backend as decode_backend

    print(f"fastpix {__version__}")
    print(f"torch {torch.__version__}, triton {triton.__version__}, cuda available: {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
    if torch.cuda.is_available():
        from fastpix.peaks import describe_device

        print(describe_device())
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

    cfg = build_config(BenchConfig, vars(args))
    if cfg.layers:
        print(bench.layer_table())
        return
    json_path = os.path.abspath(cfg.json)
    code = bench.run(cfg.suite, json_path, cfg.select, cfg.cpu_config)
    if os.path.isfile(json_path):
        print(bench.table(json_path))
        print(f"fastpix bench: results in {json_path}")
    if code:
        raise SystemExit(code)


def cmd_study_make(args):
    """Write a self-contained real-vs-fake study (index.html, study.json, images/) from results folders."""
    from fastpix.config import StudyConfig
    from fastpix.study.page import make_study

    cfg = build_config(StudyConfig, vars(args))
    study = make_study(args.results, args.out, cfg, args.names)
    for m in study["models"]:
        print(f"fastpix study: {m['name']}: {len(m['stems'])} image pairs from {m['source']}")
    print(f"fastpix study: written to {args.out}; run it with: fastpix study serve {args.out}")


def cmd_study_serve(args):
    """Serve a study folder: observers open http://HOST:PORT/?observer=ID; each finished session is appended to
    the answers file (fsync'ed before it is acknowledged). SIGTERM / Ctrl-C: stop and finish the submissions
    received."""
    from fastpix.config import StudyServeConfig

    try:
        from fastpix.study.server import create_app, run
    except ImportError as exc:
        raise SystemExit(f"fastpix study serve: error: {exc.name} is missing; install the server with "
                         "pip install 'fastpix[serve]'") from exc
    cfg = build_config(StudyServeConfig, vars(args))
    app = create_app(args.folder, cfg)
    print(f"fastpix study: serving {args.folder} at http://{cfg.host}:{cfg.port}/?observer=ID; answers go to "
          f"{app.state.answers.path}", flush=True)
    run(app, cfg.host, cfg.port)


def cmd_study_report(args):
    """'% judged real' per model with 95% Wilson intervals, per observer and pooled; observers who miss an
    attention check are flagged and left out of the pooled number."""
    from fastpix.study.answers import read_sessions
    from fastpix.study.page import ANSWERS_FILE, load_study
    from fastpix.study.report import build_report, format_report, write_report

    study = load_study(args.folder)
    sessions, unreadable = [], 0
    for path in args.answers or [os.path.join(args.folder, ANSWERS_FILE)]:
        if not os.path.isfile(path):
            raise SystemExit(f"fastpix study report: error: {path}: no such answers file (no session saved yet?)")
        found, bad = read_sessions(path)
        sessions, unreadable = sessions + found, unreadable + bad
    report = build_report(study, sessions, unreadable)
    print(format_report(report))
    target = args.json or os.path.join(args.folder, "report.json")
    write_report(report, target)
    print(f"fastpix study report: written to {target}")


def add_study_parser(sub):
    from fastpix.config import StudyConfig, StudyServeConfig

    p = sub.add_parser("study", help="the paper's real-vs-fake perceptual study: make, serve, report",
                       allow_abbrev=False)
    study_sub = p.add_subparsers(dest="study_command", required=True, metavar="WHAT")
    s = subcommand(study_sub, "make", cmd_study_make, "write a study folder from results folders",
                   (StudyConfig, "protocol"))
    s.add_argument("--results", nargs="+", required=True, metavar="DIR",
                   help="results folders (results/<name>/<phase>_<epoch>), one per model to compare (required)")
    s.add_argument("--out", required=True, metavar="DIR", help="the study folder to write (required)")
    s.add_argument("--names", nargs="+", default=None, metavar="NAME",
                   help="one name per results folder (default: <name>/<phase>_<epoch> of each)")
    s = subcommand(study_sub, "serve", cmd_study_serve, "serve a study folder and collect the answers",
                   (StudyServeConfig, "server"))
    s.add_argument("folder", metavar="DIR", help="a folder written by fastpix study make")
    s = subcommand(study_sub, "report", cmd_study_report, "%% judged real per model, per observer and pooled")
    s.add_argument("folder", metavar="DIR", help="a folder written by fastpix study make")
    s.add_argument("--answers", nargs="+", default=None, metavar="FILE",
                   help="answers files (JSON lines; downloaded sessions too) (default: DIR/answers.jsonl)")
    s.add_argument("--json", default=None, metavar="FILE", help="where to write the report (default: DIR/report.json)")


def subcommand(sub, name: str, func, help: str, *configs) -> argparse.ArgumentParser:
    """A subcommand running func, with the flags of each (dataclass, group title) in configs; no abbreviated flags,
    so a misspelt or reference-only flag can never land on another one."""
    p = sub.add_parser(name, help=help, description=func.__doc__, formatter_class=FORMATTER,
                       allow_abbrev=False)
    for cls, title in configs:
        add_config_args(p, cls, title)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    p.set_defaults(func=func)
    return p


def add_train(sub):
    p = subcommand(sub, "train", cmd_train, "train pix2pix (with no --dataroot: on the built-in demo data)",
                   (ModelConfig, "model"), (DataConfig, "data"), (TrainConfig, "training"),
                   (ReferenceConfig, "reference options"), (ReferenceDisplayConfig, DISPLAY_TITLE))
    p.add_argument("--overwrite", action="store_true", help="start afresh over an existing run of --name "
                   "(default: refuse, so that no run is lost by accident)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: show it)")
    p.set_defaults(overwrite=False, quiet=False)


def add_test(sub):
    saved = "(default: from the run's config.json)"
    subcommand(sub, "test", cmd_test, "run the test protocol over a split and write a results page",
               (ModelConfig, f"model {saved}"), (DataConfig, f"data {saved}"), (TestConfig, "test"),
               (ReferenceConfig, "reference options"), (ReferenceTestConfig, "reference test options"),
               (ReferenceDisplayConfig, DISPLAY_TITLE))


def add_eval(sub):
    saved = "(default: from the run's config.json)"
    subcommand(sub, "eval", cmd_eval, "score a checkpoint (or saved results) on a split: L1, PSNR, SSIM, sharpness",
               (ModelConfig, f"model {saved}"), (DataConfig, f"data {saved}"), (EvalConfig, "evaluation"),
               (ReferenceConfig, "reference options"), (ReferenceDisplayConfig, DISPLAY_TITLE))


def add_predict(sub):
    p = subcommand(sub, "predict", cmd_predict, "translate image files or folders with a checkpoint (any image "
                   "size)", (PredictConfig, "prediction"))
    p.add_argument("--input", nargs="+", required=True, metavar="DIR_OR_FILE",
                   help="image files and/or folders (searched recursively) (required)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the translated images (required)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: show it)")
    p.set_defaults(quiet=False)


def add_data(sub):
    p = sub.add_parser("data", help="data sets: `fastpix data demo --out DIR` writes the built-in demo set",
                       allow_abbrev=False)
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="WHAT")
    subcommand(data_sub, "demo", cmd_data_demo, "write the built-in demo data set (aligned A|B, train/val/test)",
               (DemoDataConfig, "demo data"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastpix", description="pix2pix, fast: train, test and export.",
                                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"fastpix {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train(sub)
    add_test(sub)
    add_eval(sub)
    add_predict(sub)
    subcommand(sub, "serve", cmd_serve, "serve a checkpoint over HTTP with dynamic batching (the 'serve' extra)",
               (ServeConfig, "server"))
    add_data(sub)
    subcommand(sub, "demo", cmd_demo, "generate the demo data, train, test, and say where the results are",
               (DemoConfig, "demo"))
    subcommand(sub, "export", cmd_export, "write a run's weights as reference-loadable .pth state dicts, or the "
               "generator as ONNX or an AOTInductor package", (ExportConfig, "export"))
    subcommand(sub, "info", cmd_info, "versions, devices and the active image decoder")
    subcommand(sub, "bench", cmd_bench, "benchmark fastpix against eager PyTorch on this machine",
               (BenchConfig, "benchmarks"))
    add_study_parser(sub)
    return parser


def user_error(exc: BaseException) -> tuple[str, int] | None:
    """(one line, exit status) for an error the user can fix; None for a programming error (its traceback shows)."""
    from fastpix.errors import UserError

    if isinstance(exc, KeyboardInterrupt):
        return str(exc) or "interrupted", getattr(exc, "exit_status", 130)  # train.stop.Stopped: 128 + signal
    if isinstance(exc, UserError):
        return f"error: {exc}", exc.exit_status
    if isinstance(exc, OSError):  # permission denied, no space left, a missing file: with the path
        paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
        return f"error: {exc.strerror or exc}{': ' + paths if paths else ''}", 1
    if isinstance(exc, ModuleNotFoundError) and exc.name and not exc.name.startswith("fastpix"):
        return f"error: this needs the optional package {exc.name.split('.')[0]} (pip install it)", 1
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return f"error: out of device memory (try a smaller --batch_size or --crop_size): {exc}".split("\n")[0], 1
    if isinstance(exc, MemoryError):
        return f"error: {str(exc) or 'out of memory'}", 1
    if isinstance(exc, (ValueError, TypeError)) and "--" in str(exc):  # names the flag to change
        return f"error: {exc}", 2
    return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    debug = args.debug or os.environ.get("FASTPIX_DEBUG", "0") not in ("", "0")
    try:
        args.func(args)
    except (Exception, KeyboardInterrupt) as exc:
        known = None if debug else user_error(exc)
        if known is None:
            raise
        print(f"fastpix {args.command}: {known[0]}", file=sys.stderr)
        return known[1]
    return 0
