"""`fastpix bench` (fastpix/bench.py): the installed suites run from the user's folder, the JSON lands where asked
(relative to that folder, nothing beside the suites), the comparison table shows each case's speed-up over its
group's eager baseline and % of the roof, and a missing pytest-benchmark is one line saying how to install it."""

import json
import os
import sys

import pytest
from source_wheel import build_wheel

from fastpix import bench
from fastpix.cli import main
from fastpix.errors import MissingDependency


def test_bench_runs_the_installed_suites_from_the_current_folder(tmp_path, monkeypatch, capfd):
    suites = bench.suites_folder()

    def written_beside_the_suites():  # Python's own bytecode cache aside
        return sorted(name for name in os.listdir(suites) if name != "__pycache__")

    before = written_beside_the_suites()
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--suite", "train", "--cpu_config", "dry", "--json", "runs/train.json"]) == 0
    out = capfd.readouterr().out
    results = json.loads((tmp_path / "runs" / "train.json").read_text())["benchmarks"]
    assert results and results[0]["extra_info"]["config"]["netG"] == "unet_32"  # the dry setting ran
    assert f"fastpix bench: results in {tmp_path / 'runs' / 'train.json'}" in out
    table = out[out.index("group ") :]
    assert "speed-up" in table and "test_train_iteration[2-a_reference_fp32_nchw]" in table
    baseline = next(line for line in table.splitlines() if "a_reference_fp32_nchw" in line)
    assert baseline.endswith("1.00x") and "% roof against fp32:" in table
    assert sorted(os.listdir(tmp_path)) == ["runs"]  # no .benchmarks or cache folder left in the user's folder
    assert written_beside_the_suites() == before


def test_the_table_shows_speed_up_over_each_groups_baseline_and_the_roof(tmp_path):
    def case(name, group, median, baseline, **info):
        return {"name": name, "group": group, "stats": {"median": median}, "extra_info": {"baseline": baseline, **info}}

    path = tmp_path / "results.json"
    path.write_text(
        json.dumps(
            {
                "benchmarks": [
                    case(
                        "eager",
                        "train batch 1",
                        0.040,
                        True,
                        img_per_s=25.0,
                        fraction_of_peak=0.10,
                        precision="fp32",
                        roof="100 GFLOP/s fp32 (measured)",
                    ),
                    case(
                        "fastpix",
                        "train batch 1",
                        0.010,
                        False,
                        img_per_s=100.0,
                        mfu=0.20,
                        precision="bf16",
                        roof="200 GFLOP/s bf16 (measured)",
                    ),
                    case("decode", "data", 0.005, False),
                ]
            }
        )
    )
    lines = bench.table(str(path)).splitlines()
    fastpix = next(line for line in lines if " fastpix " in line)
    assert fastpix.split()[-2:] == ["20.0%", "4.00x"] and "100.0" in fastpix
    assert next(line for line in lines if " decode " in line).split()[-2:] == ["-", "-"]  # no baseline, no roof
    assert lines[-2:] == [
        "% roof against bf16: 200 GFLOP/s bf16 (measured)",
        "% roof against fp32: 100 GFLOP/s fp32 (measured)",
    ]


def test_without_pytest_benchmark_bench_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pytest_benchmark", None)  # as if not installed: find_spec finds nothing
    with pytest.raises(MissingDependency, match=r"pytest-benchmark: pip install 'fastpix\[bench\]'"):
        bench.run(["train"], str(tmp_path / "out.json"))
    assert not (tmp_path / "out.json").exists()


def test_bench_works_from_an_installed_wheel(tmp_path):
    """A wheel of fastpix carries the suites (fastpix.bench_suites); installed outside the source tree, fastpix
    bench runs them from there and writes into the current folder."""
    import subprocess
    import zipfile

    wheel = build_wheel(tmp_path, ("fastpix", "kernels", "bench/suites"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {
        f"fastpix/bench_suites/{name}.py"
        for name in (
            "__init__",
            "conftest",
            "common",
            "layers",
            "bench_train",
            "bench_infer",
            "bench_data",
            "bench_kernels",
        )
    } <= set(names)
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}  # the wheel's fastpix before the checkout's
    done = subprocess.run(
        [sys.executable, "-m", "fastpix", "bench", "--suite", "train", "--cpu_config", "dry", "--select", "reference"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"results in {work / 'fastpix-bench.json'}" in done.stdout and "1.00x" in done.stdout
    where = subprocess.run(
        [sys.executable, "-c", "from fastpix import bench; print(bench.suites_folder())"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where == str(site / "fastpix" / "bench_suites")  # the installed suites ran, not the checkout's
    assert sorted(os.listdir(work)) == ["fastpix-bench.json"]
