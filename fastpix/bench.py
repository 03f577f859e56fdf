"""`fastpix bench`: run fastpix's benchmark suites on this machine and print the comparison table; `--layers`: what
backend 'triton' chooses per conv layer on this GPU.

The suites are pytest-benchmark files installed with fastpix as fastpix.bench_suites (bench/suites/ in the source
tree); they need the `bench` extra (pytest, pytest-benchmark). They run in a pytest process started in the current
folder, so the JSON lands where the user asked, relative to that folder, and nothing is written beside the suites.
Each case records its group and whether it is the group's baseline (the eager PyTorch twin), so the table shows
every case's speed-up over that baseline and the fraction of the device's roof it reached (fastpix/peaks.py).
This module locates the suites without importing them: nothing in fastpix imports fastpix.bench_suites.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import torch

from fastpix.errors import ConfigError, MissingDependency

SUITES_PACKAGE = "fastpix.bench_suites"


def suites_folder() -> str:
    """Where the installed suites are (bench/suites/ for an editable install)."""
    spec = importlib.util.find_spec(SUITES_PACKAGE)
    if spec is None or not spec.submodule_search_locations:  # setup.py installs them with fastpix: a broken install
        raise RuntimeError(f"{SUITES_PACKAGE} is missing from this installation of fastpix: reinstall fastpix")
    return list(spec.submodule_search_locations)[0]


def require_pytest_benchmark():
    for module, package in (("pytest", "pytest"), ("pytest_benchmark", "pytest-benchmark")):
        if importlib.util.find_spec(module) is None:
            raise MissingDependency(package, "bench", "fastpix bench")


def run(suites: list[str], json_path: str, select: str | None = None, cpu_config: str = "reduced") -> int:
    """Run the suites (names as in bench_<name>.py) under pytest-benchmark, writing its JSON to `json_path`
    (relative to the current folder; an earlier file there is replaced). Returns pytest's exit status."""
    require_pytest_benchmark()
    folder = suites_folder()
    files = [os.path.join(folder, f"bench_{suite}.py") for suite in suites]
    unknown = [suite for suite, path in zip(suites, files) if not os.path.isfile(path)]
    if unknown:
        raise ConfigError(f"--suite {' '.join(unknown)}: no such benchmark suite in {folder}")
    json_path = os.path.abspath(json_path)
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    if os.path.exists(json_path):
        os.remove(json_path)  # a failed run must not leave the previous run's table to be printed as this one's
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--rootdir={folder}",
        f"--confcutdir={folder}",
        *files,
        f"--benchmark-json={json_path}",
        "--benchmark-disable-gc",
        "--benchmark-sort=name",
        f"--cpu-config={cpu_config}",
    ]
    if select:
        cmd += ["-k", select]
    with tempfile.TemporaryDirectory(prefix="fastpix-bench-") as scratch:
        # An empty configuration: no pytest settings of a project the suites happen to be installed under apply.
        # pytest-benchmark creates its storage folder (./.benchmarks) even when nothing is saved: a temporary one.
        config = os.path.join(scratch, "pytest.ini")
        with open(config, "w") as f:
            f.write("[pytest]\n")
        return subprocess.call([*cmd, "-c", config, f"--benchmark-storage=file://{scratch}"])


def table(json_path: str) -> str:
    """The comparison table: one line per case with its group, median, img/s (where known), % of the device's roof
    for the case's precision and speed-up over the group's baseline; then the roofs the rows are against."""
    with open(json_path) as f:
        results = json.load(f)["benchmarks"]
    baselines = {r["group"]: r["stats"]["median"] for r in results if r.get("extra_info", {}).get("baseline")}
    lines = [f"{'group':<28} {'case':<48} {'median ms':>10} {'img/s':>10} {'% roof':>7} {'speed-up':>9}"]
    roofs = {}
    for r in sorted(results, key=lambda r: (r["group"] or "", r["name"])):
        info = r.get("extra_info", {})
        median = r["stats"]["median"]
        base = baselines.get(r["group"])
        speedup = f"{base / median:.2f}x" if base else "-"
        img = f"{info['img_per_s']:.1f}" if info.get("img_per_s") else "-"
        fraction = info.get("fraction_of_peak", info.get("mfu"))
        roof = f"{100 * fraction:.1f}%" if fraction else "-"
        if info.get("roof"):
            roofs[info.get("precision") or info.get("dtype") or "-"] = info["roof"]
        lines.append(
            f"{(r['group'] or '')[:28]:<28} {r['name'][:48]:<48} {1000 * median:>10.3f} {img:>10} "
            f"{roof:>7} {speedup:>9}"
        )
    lines += [f"% roof against {precision}: {roof}" for precision, roof in sorted(roofs.items())]
    return "\n".join(lines)


def layer_table(batches=(1, 16, 64)) -> str:
    """What backend 'triton' runs for each conv of unet_256 (ngf 64) and the basic PatchGAN (ndf 64) at 256² in bf16
    on this GPU, per batch: the fused block's and cuDNN's forward + backward median time, as the tuning step
    measures them on the networks themselves (cached with this machine's timings: measured once), and the choice."""
    from fastpix.models import define_D, define_G, tune_layers

    if not torch.cuda.is_available():
        raise ConfigError(
            "--layers: the per-layer choice is measured on a CUDA device; on a CPU backend 'triton' "
            "always runs the Triton kernels (through the interpreter)"
        )
    lines = [f"{'net':<3} {'batch':>5} {'triton ms':>10} {'cuDNN ms':>10} {'speed-up':>9}  {'choice':<8} layer"]
    for batch in batches:
        for name, net, channels in (
            ("G", define_G(3, 3, 64, "unet_256", "batch", True, backend="triton"), 3),
            ("D", define_D(6, 64, "basic", backend="triton"), 6),
        ):
            net = net.to("cuda", memory_format=torch.channels_last).train()
            x = torch.randn(batch, channels, 256, 256, device="cuda").contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                choices = tune_layers(net, x)
            for key, choice in choices.items():
                timings = net.fused_forward.tuning.layer_timings(key) or {}
                t_fused, t_eager = timings.get("triton_ms"), timings.get("cudnn_ms")
                times = (
                    f"{t_fused:>10.3f} {t_eager:>10.3f} {t_eager / t_fused:>8.2f}x"
                    if t_fused and t_eager
                    else f"{'-':>10} {'-':>10} {'-':>9}"
                )
                lines.append(f"{name:<3} {batch:>5} {times}  {choice:<8} {key}")
    return "\n".join(lines)
