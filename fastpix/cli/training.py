"""`fastpix train`, `test`, `eval` and `demo`: the commands of a run folder."""

from __future__ import annotations

import os
import shlex
import time

from fastpix.cli.console import is_main_process, note
from fastpix.cli.flags import QUIET_ACCEPTED, QUIET_HELP, build_config, subcommand
from fastpix.cli.run_setup import RunSetup
from fastpix.config import (
    DataConfig,
    DemoConfig,
    EvalConfig,
    ModelConfig,
    ReferenceConfig,
    ReferenceDisplayConfig,
    ReferenceTestConfig,
    TestConfig,
    TrainConfig,
    demo_configs,
    demo_options,
)
from fastpix.errors import ConfigError

RANK_EXIT_DELAY_S = 3.0
DISPLAY_TITLE = (
    "the reference's visdom/HTML display, accepted and ignored: fastpix writes <run>/samples/, "
    "<run>/loss.png, <run>/metrics.jsonl and, with --tensorboard, TensorBoard logs"
)
SAVED = "(default: from the run's config.json)"


def check_launch(train_cfg, given: dict):
    """Refuse a multi-process launch that every rank would fail later, before any work: once, in one line."""
    import torch

    from fastpix.train.distributed import check_world, launch_world_size

    world_size = launch_world_size(train_cfg.nproc)
    cuda = torch.cuda.is_available() and not str(train_cfg.device or "cuda").startswith("cpu")
    try:
        check_world(train_cfg.batch_size, world_size, given.get("norm"), cuda)
    except ConfigError:
        if not is_main_process():  # rank 0 says it; torchrun kills the others once one exits, so leave it time
            time.sleep(RANK_EXIT_DELAY_S)
            raise SystemExit(2) from None
        raise


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


def note_reference_display(args, given: dict):
    flags = [f"--{f}" for f in ReferenceDisplayConfig.__dataclass_fields__ if f in given]
    if flags:
        note(
            args,
            f"{', '.join(flags)}: the reference's visdom/HTML display, ignored; fastpix writes sample grids "
            "to <run>/samples/ and the loss plot <run>/loss.png every --display_freq iterations, losses to "
            "<run>/metrics.jsonl every --print_freq, and TensorBoard logs with --tensorboard",
        )


def demo_defaults(args, train_cfg, recorded: dict) -> dict:
    """Without --dataroot (given or recorded): the demo's data, model and schedule, as `fastpix demo` trains them;
    flags given still override each."""
    if "dataroot" in vars(args) or recorded.get("dataroot"):
        return {}
    from fastpix.data.demo import ensure_demo_data
    from fastpix.runtime import default_device

    options = demo_options(gpu=default_device(train_cfg.device).type == "cuda")
    options["dataroot"] = ensure_demo_data(options["crop_size"])
    note(
        args,
        f"no --dataroot: training on the built-in demo data in {options['dataroot']} at the demo's scale "
        f"({options['netG']}, ngf {options['ngf']}, {options['crop_size']}², batch {options['batch_size']}, "
        f"{options['n_epochs']}+{options['n_epochs_decay']} epochs; flags given override these)",
    )
    return options


def cmd_train(args):
    from fastpix.store.run_config import saved_config
    from fastpix.train.loop import train

    run = RunSetup.start(args, TrainConfig)
    check_launch(run.cfg, run.given)
    if run.cfg.nproc and run.cfg.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from fastpix.train.distributed import relaunch_with_torchrun

        return relaunch_with_torchrun(run.cfg.nproc, without_flag(args.argv, "--nproc"))
    note_reference_display(args, run.given)
    recorded = saved_config(os.path.join(run.cfg.checkpoints_dir, run.cfg.name)) if run.cfg.continue_train else {}
    defaults = demo_defaults(args, run.cfg, recorded)
    model_cfg, data_cfg = run.configs(defaults, recorded)
    train_cfg = build_config(TrainConfig, defaults, run.given, {"name": run.cfg.name})
    run.ready(model_cfg, data_cfg)
    run_dir = train(model_cfg, data_cfg, train_cfg, overwrite=args.overwrite, progress=not args.quiet)
    if is_main_process():
        print(f"fastpix train: checkpoints in {run_dir}")


def cmd_test(args):
    """Run the test protocol over a split and write a results page (the reference's test.py): the generator of
    --name (or --checkpoint: a run folder or a weights file, a reference .pth included) at the size the run was
    trained at, else at the size of the split's images."""
    from fastpix.evaluate import run_test
    from fastpix.store.generator import locate_generator

    run = RunSetup.start(args, TestConfig, ReferenceTestConfig)
    cfg = run.cfg
    source = locate_generator(cfg.checkpoint, cfg.checkpoints_dir, cfg.name, cfg.weights_tag())
    if cfg.checkpoint:
        cfg.name = source.run_name
    model_cfg, data_cfg = run.checkpoint_configs(source, cfg.phase, data_required=True)
    run.ready(model_cfg, data_cfg, ("G",))
    out = run_test(
        model_cfg,
        data_cfg,
        cfg,
        source.weights,
        build_config(ReferenceDisplayConfig, run.given).display_winsize,
        build_config(ReferenceTestConfig, run.given).aspect_ratio,
    )
    print(f"fastpix test: results in {os.path.join(out, 'index.html')}")


def cmd_eval(args):
    """Score a checkpoint on a split (or saved results): L1, PSNR, SSIM, sharpness; optional baselines, FID/KID."""
    from fastpix import evaluate
    from fastpix.store.generator import locate_generator
    from fastpix.store.run_config import saved_config

    run = RunSetup.start(args, EvalConfig)
    cfg = run.cfg
    if cfg.results and cfg.checkpoint is None:  # scores saved images: no generator, the run's config if any
        source, run_name = None, cfg.name
        model_cfg, data_cfg = run.configs(saved_config(os.path.join(cfg.checkpoints_dir, cfg.name)))
    else:
        source = locate_generator(cfg.checkpoint, cfg.checkpoints_dir, cfg.name, cfg.weights_tag())
        run_name = source.run_name
        model_cfg, data_cfg = run.checkpoint_configs(source, cfg.phase, data_required=not cfg.results)
        run.ready(model_cfg, data_cfg, ("G",))
    report = evaluate.run_eval(model_cfg, data_cfg, cfg, None if source is None else source.weights, run_name)
    print(evaluate.format_report(report))
    if "page" in report:
        print(f"fastpix eval: results page {report['page']}")
    if cfg.json:
        evaluate.write_json(cfg.json, report)
        print(f"fastpix eval: report written to {cfg.json}")


def cmd_demo(args):
    """Generate the demo data, train on it (a few minutes on CPU), run the test protocol, print where it is and the
    command that serves the draw page on the model."""
    from fastpix.data.demo import write_demo_dataset
    from fastpix.evaluate import run_test
    from fastpix.runtime import default_device
    from fastpix.store.generator import locate_generator
    from fastpix.train.loop import train

    cfg = build_config(DemoConfig, vars(args))
    model_cfg, data_cfg, train_cfg, test_cfg = demo_configs(cfg, default_device(cfg.device).type == "cuda")
    write_demo_dataset(data_cfg.dataroot, data_cfg.crop_size)
    run_dir = train(model_cfg, data_cfg, train_cfg, overwrite=True, progress=not args.quiet)
    out = run_test(model_cfg, data_cfg, test_cfg, locate_generator(run_dir).weights)
    print(f"fastpix demo: checkpoints in {run_dir}")
    print(f"fastpix demo: results page {os.path.join(out, 'index.html')}")
    print(f"fastpix demo: draw and see live: {draw_page_command(run_dir, data_cfg.dataroot)}")


def draw_page_command(run_dir: str, dataroot: str) -> str:
    """The command serving the draw page on the demo's model, with the demo's label colours and its val split as
    the examples, and the page's address."""
    from fastpix.config import HttpServerConfig

    words = [
        "fastpix",
        "serve",
        "--checkpoint",
        run_dir,
        "--palette",
        "demo",
        "--examples",
        os.path.join(dataroot, "val"),
    ]
    return f"{shlex.join(words)}  # then open http://{HttpServerConfig.host}:{HttpServerConfig.port}/"


def register(sub):
    p = subcommand(
        sub,
        "train",
        cmd_train,
        "train pix2pix (with no --dataroot: on the built-in demo data)",
        (ModelConfig, "model"),
        (DataConfig, "data"),
        (TrainConfig, "training"),
        (ReferenceConfig, "reference options"),
        (ReferenceDisplayConfig, DISPLAY_TITLE),
        quiet=QUIET_HELP,
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh over an existing run of --name (default: refuse, so that no run is lost by accident)",
    )
    p.set_defaults(overwrite=False)
    subcommand(
        sub,
        "test",
        cmd_test,
        "run the test protocol over a split and write a results page",
        (ModelConfig, f"model {SAVED}"),
        (DataConfig, f"data {SAVED}"),
        (TestConfig, "test"),
        (ReferenceConfig, "reference options"),
        (ReferenceTestConfig, "reference test options"),
        (ReferenceDisplayConfig, DISPLAY_TITLE),
        quiet=QUIET_ACCEPTED,
    )
    subcommand(
        sub,
        "eval",
        cmd_eval,
        "score a checkpoint (or saved results) on a split: L1, PSNR, SSIM, sharpness",
        (ModelConfig, f"model {SAVED}"),
        (DataConfig, f"data {SAVED}"),
        (EvalConfig, "evaluation"),
        (ReferenceConfig, "reference options"),
        (ReferenceDisplayConfig, DISPLAY_TITLE),
        quiet=QUIET_ACCEPTED,
    )
    subcommand(
        sub,
        "demo",
        cmd_demo,
        "generate the demo data, train, test, and say where the results are",
        (DemoConfig, "demo"),
        quiet=QUIET_HELP,
    )
