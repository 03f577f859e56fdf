"""The `fastpix` command end to end on tiny configurations, with the reference's flag spellings."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from fastpix.cli import build_parser, main
from fastpix.models import define_G
from fastpix.store.weights import load_train_state, load_weights

TINY = ["--netG", "unet_32", "--ngf", "4", "--ndf", "4", "--load_size", "36", "--crop_size", "32"]


def test_train_test_export_with_reference_flags(tiny_data, workdir, capsys):
    argv = [
        "train",
        "--dataroot",
        tiny_data,
        "--name",
        "facades_pix2pix",
        "--model",
        "pix2pix",
        "--direction",
        "BtoA",
        "--batch_size",
        "2",
        "--n_epochs",
        "1",
        "--n_epochs_decay",
        "0",
        "--gpu_ids",
        "-1",
        "--num_threads",
        "0",
        "--quiet",
        *TINY,
    ]
    assert main(argv) == 0
    run = workdir / "checkpoints" / "facades_pix2pix"
    assert {
        "latest_net_G.safetensors",
        "latest_net_D.safetensors",
        "latest_train_state.pt",
        "config.json",
        "metrics.jsonl",
    } <= set(os.listdir(run))

    # test reads the architecture and direction from config.json; the paper's protocol by default
    assert main(["test", "--name", "facades_pix2pix", "--num_test", "2"]) == 0
    out = workdir / "results" / "facades_pix2pix" / "test_latest"
    html = (out / "index.html").read_text()
    assert html.count("<h3>") == 2 and "dropout on" in html
    assert sorted(os.listdir(out / "images")) == [
        f"000{i}_{k}.png" for i in (0, 1) for k in ("fake_B", "real_A", "real_B")
    ]
    assert Image.open(out / "images" / "0000_fake_B.png").size == (32, 32)

    assert main(["export", "--format", "pth", "--name", "facades_pix2pix", "--out", str(workdir / "pth")]) == 0
    G = define_G(3, 3, 4, "unet_32", "batch", True, backend="eager")
    G.load_state_dict(torch.load(workdir / "pth" / "latest_net_G.pth", weights_only=True), strict=True)
    assert torch.equal(
        G.state_dict()["model.model.0.weight"],
        load_weights(str(run / "latest_net_G.safetensors"))["model.model.0.weight"],
    )


def test_reference_checkpoint_folder_is_used_as_is(tiny_data, workdir):
    """A reference user's checkpoints/<name>/latest_net_G.pth runs under `fastpix test --name <name>`."""
    os.makedirs(workdir / "checkpoints" / "ref")
    G = define_G(3, 3, 4, "unet_32", "batch", True, backend="eager")
    torch.save(G.state_dict(), workdir / "checkpoints" / "ref" / "latest_net_G.pth")
    argv = ["test", "--dataroot", tiny_data, "--name", "ref", "--eval", "--num_test", "1", *TINY]
    assert main(argv) == 0
    html = (workdir / "results" / "ref" / "test_latest" / "index.html").read_text()
    assert "eval mode (--eval): running BatchNorm statistics, no dropout" in html


def test_errors_name_the_problem(workdir, capsys):
    assert main(["train", "--dataroot", str(workdir / "missing"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--dataroot" in err and "missing is not a folder" in err
    assert main(["test", "--name", "nothing", "--dataroot", str(workdir)]) == 2
    assert "no latest_net_G.safetensors or latest_net_G.pth" in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint_that_resumes(tiny_data, workdir):
    argv = [
        sys.executable,
        "-m",
        "fastpix",
        "train",
        "--dataroot",
        tiny_data,
        "--name",
        "int",
        "--n_epochs",
        "1000",
        "--num_threads",
        "0",
        "--print_freq",
        "1",
        "--quiet",
        *TINY,
    ]
    proc = subprocess.Popen(argv, cwd=workdir, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "checkpoints" / "int" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume with --continue_train" in err
    state = load_train_state(str(workdir / "checkpoints" / "int" / "latest_train_state.pt"))
    assert state["iteration"] >= 3
    resumed = [
        "train",
        "--dataroot",
        tiny_data,
        "--name",
        "int",
        "--continue_train",
        "--max_iters",
        str(state["iteration"] + 1),
        "--num_threads",
        "0",
        "--quiet",
    ]
    assert main(resumed) == 0  # the architecture comes back from config.json
    assert (
        load_train_state(str(workdir / "checkpoints" / "int" / "latest_train_state.pt"))["iteration"]
        == state["iteration"] + 1
    )


def test_every_subcommand_has_help(capsys):
    """Every subcommand the parser has (so a new one is covered too) answers --help, and each of its flags is
    explained with its default."""
    import argparse

    from fastpix.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"train", "test", "eval", "predict", "serve", "export", "data", "demo", "bench", "info"} <= set(commands)
    for cmd, parser in commands.items():
        try:
            main([cmd, "--help"])
        except SystemExit as exc:
            assert exc.code == 0
        assert capsys.readouterr().out.startswith("usage: ")
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS and "-h" not in action.option_strings:
                assert action.help, f"fastpix {cmd} {action.option_strings[0]} has no help text"
                if not action.required and not isinstance(
                    action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)
                ):
                    assert any(word in action.help for word in ("default", "required", "ignored")), (
                        f"fastpix {cmd} {action.option_strings[0]}: no default in its help"
                    )
    from fastpix.data.decode import backend

    assert main(["info"]) == 0
    assert f"image decoder: {backend()}" in capsys.readouterr().out


def test_bench_table_shows_speedups_over_each_groups_baseline(tmp_path):
    import json

    from fastpix.bench import table

    results = {
        "benchmarks": [
            {
                "group": "train batch 1",
                "name": "ref",
                "stats": {"median": 0.010},
                "extra_info": {"baseline": True, "img_per_s": 100.0},
            },
            {"group": "train batch 1", "name": "fast", "stats": {"median": 0.004}, "extra_info": {"img_per_s": 250.0}},
            {"group": "other", "name": "lonely", "stats": {"median": 0.001}, "extra_info": {}},
        ]
    }
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    rows = table(str(path)).splitlines()[1:]
    lines = {name: next(row for row in rows if f" {name} " in row) for name in ("ref", "fast", "lonely")}
    assert lines["fast"].endswith("2.50x") and "250.0" in lines["fast"]
    assert lines["ref"].endswith("1.00x") and lines["lonely"].endswith("-")


def test_demo_flags_reach_its_training_config():
    """`fastpix demo --precision fp32 --gan_mode none` is how docs/benchmarks.md's "Proof of learning" rows are
    reproduced."""
    from fastpix.config import DemoConfig, demo_configs

    args = build_parser().parse_args(["demo", "--out", "d", "--precision", "fp32", "--gan_mode", "none"])
    cfg = DemoConfig(out=args.out, precision=args.precision, gan_mode=args.gan_mode)
    _, data, train, _ = demo_configs(cfg, gpu=False)
    assert (train.precision, train.gan_mode, data.dataroot) == ("fp32", "none", "d/data")
    assert demo_configs(DemoConfig(), gpu=False)[2].precision is None  # the run's own default: runtime decides


def leaf_parsers(parser, prefix=()):
    """(command words, parser) of every subcommand that runs something (data demo, study make, … included)."""
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
    for sub in subs:
        for name, child in sub.choices.items():
            yield from leaf_parsers(child, (*prefix, name))


def test_the_common_flags_are_on_every_subcommand_where_they_mean_something():
    """--debug everywhere; --quiet and --device on every command that runs a network (test --quiet too)."""
    flags = {
        " ".join(words): {s for a in p._actions for s in a.option_strings} for words, p in leaf_parsers(build_parser())
    }
    assert {
        "train",
        "test",
        "eval",
        "demo",
        "predict",
        "serve",
        "export",
        "info",
        "bench",
        "data demo",
        "study make",
        "study serve",
        "study report",
    } <= set(flags)
    assert all("--debug" in f for f in flags.values())
    for command in ("train", "test", "eval", "demo", "predict"):
        assert {"--quiet", "--device"} <= flags[command], command
    assert "--device" in flags["serve"]
    assert build_parser().parse_args(["test", "--quiet", "--name", "x"]).quiet


def test_an_unknown_flag_gets_its_subcommands_usage_and_the_nearest_flag(capsys):
    for argv, prog, hint in (
        (["train", "--netg", "unet_32"], "fastpix train", " (did you mean --netG?)"),
        (["data", "demo", "--out", "d", "--sizes", "3"], "fastpix data demo", " (did you mean --size?)"),
        (
            ["test", "--num_tst", "2", "--batchsize", "1"],
            "fastpix test",
            " (did you mean --num_test for --num_tst, --batch_size for --batchsize?)",
        ),
        (["eval", "--bogus"], "fastpix eval", ""),
    ):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        err = capsys.readouterr().err
        assert stopped.value.code == 2 and err.startswith(f"usage: {prog} [-h]"), err
        unknown = " ".join(argv[argv.index("demo") + 3 if "demo" in argv else 1 :])
        assert err.splitlines()[-1] == f"{prog}: error: unrecognized arguments: {unknown}{hint}"


def test_a_bare_reference_pth_runs_in_test_and_eval_at_the_size_of_the_images(tiny_data, workdir, capsys):
    """No config.json beside it: the architecture comes from the weights' keys (not unet_256's defaults) and the
    size from the images (32², not crop_size 256's upscaling), each said; a flag that differs is said too."""
    G = define_G(3, 3, 8, "unet_32", "instance", True, backend="eager")  # ngf and norm unlike the defaults
    os.makedirs(workdir / "checkpoints" / "ref")
    weights = workdir / "checkpoints" / "ref" / "latest_net_G.pth"
    torch.save(G.state_dict(), weights)
    assert main(["test", "--dataroot", tiny_data, "--name", "ref", "--num_test", "1"]) == 0
    assert "fastpix test: crop_size 32, the size of the images of test (32×32)" in capsys.readouterr().out
    assert Image.open(workdir / "results" / "ref" / "test_latest" / "images" / "0000_fake_B.png").size == (32, 32)
    assert main(["eval", "--dataroot", tiny_data, "--checkpoint", str(weights), "--num_test", "1"]) == 0
    assert "fastpix eval: crop_size 32, the size of the images of val (32×32)" in capsys.readouterr().out
    assert Image.open(workdir / "results" / "ref" / "eval_val_latest" / "images" / "0000_fake_B.png").size == (32, 32)
    assert (
        main(["eval", "--dataroot", tiny_data, "--checkpoint", str(weights), "--num_test", "1", "--crop_size", "64"])
        == 0
    )
    assert (
        "fastpix eval: --crop_size 64: the images of val are 32×32; they are resized to 64²" in capsys.readouterr().out
    )
    assert Image.open(workdir / "results" / "ref" / "eval_val_latest" / "images" / "0000_fake_B.png").size == (64, 64)


def test_weights_that_do_not_fit_are_one_short_line(tiny_data, workdir, capsys):
    os.makedirs(workdir / "checkpoints" / "ref")
    torch.save(
        define_G(3, 3, 8, "unet_32", "instance", True).state_dict(),
        workdir / "checkpoints" / "ref" / "latest_net_G.pth",
    )
    assert (
        main(
            [
                "test",
                "--dataroot",
                tiny_data,
                "--name",
                "ref",
                "--netG",
                "unet_64",
                "--norm",
                "batch",
                "--crop_size",
                "64",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 600, err  # torch's own message lists every key: kilobytes
    assert err.startswith(
        "fastpix test: error: ./checkpoints/ref/latest_net_G.pth does not fit "
        "netG=unet_64 ngf=8 norm=batch input_nc=3 output_nc=3: "
    )
    assert "keys missing (" in err and "keys it does not have (" in err


def test_config_json_records_the_precision_used(tiny_data, workdir):
    argv = ["train", "--dataroot", tiny_data, "--name", "p", "--max_iters", "1", "--num_threads", "0", "--quiet", *TINY]
    assert main(argv) == 0
    saved = json.loads((workdir / "checkpoints" / "p" / "config.json").read_text())
    assert saved["train"]["precision"] == "fp32"  # what this CPU trained in (tests run CPUs in fp32), not null


def test_train_without_dataroot_takes_the_demo_at_the_demos_scale(workdir, monkeypatch, capsys):
    """As `fastpix demo` trains on a CPU: unet_64, ngf 32, 64², batch 4, 5 + 5 epochs; a flag given still wins."""
    from fastpix.config import user_cache_dir
    from fastpix.train import loop

    seen = {}
    monkeypatch.setattr(
        loop,
        "train",
        lambda model, data, train_cfg, **kw: seen.update(model=model, data=data, train=train_cfg) or "run",
    )
    assert main(["train", "--name", "demo", "--n_epochs", "1"]) == 0
    model, data, train = seen["model"], seen["data"], seen["train"]
    assert (model.netG, model.ngf, model.ndf, data.load_size, data.crop_size) == ("unet_64", 32, 32, 72, 64)
    assert (train.name, train.batch_size, train.n_epochs, train.n_epochs_decay) == ("demo", 4, 1, 5)
    assert data.dataroot == os.path.join(user_cache_dir(), "demo_64")
    assert len(os.listdir(os.path.join(data.dataroot, "train"))) == 400
    notes = [line for line in capsys.readouterr().out.splitlines() if "demo data" in line]
    assert notes == [
        f"fastpix train: no --dataroot: training on the built-in demo data in {data.dataroot} at the "
        "demo's scale (unet_64, ngf 32, 64², batch 4, 5+5 epochs; flags given override these)"
    ]


def test_star_import_gives_the_predictor():
    from fastpix.infer.predictor import Predictor

    namespace = {}
    exec("from fastpix import *", namespace)
    assert namespace["Predictor"] is Predictor
