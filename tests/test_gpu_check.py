"""`make gpu-check DRY=1`: every stage of the GPU kit runs on the CPU at tiny shapes and writes its record in the
one schema, so that a GPU window is never lost to a typo, a missing import or a wrong path; the kit exits non-zero
when a stage failed or ran out of its budget, with the summary still written."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import gpu_check  # noqa: E402 - a script of bench/, not a package

STAGES = [name for name, *_ in gpu_check.STAGES]


def dry_run(out, *args, timeout=900, env=None):
    environ = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTPIX_TEST")}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--dry", "--out", str(out), *args],
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def records(out):
    found = {}
    for name in STAGES:
        path = out / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


def check_schema(record, name):
    assert tuple(record) == gpu_check.SCHEMA_KEYS, name
    assert record["schema"] == gpu_check.SCHEMA and record["stage"] == name and record["dry"] is True
    assert record["status"] in gpu_check.STATUSES and record["status"] != "running"
    assert isinstance(record["rows"], list) and all(isinstance(r, dict) for r in record["rows"])
    assert {"torch", "triton", "python"} <= set(record["versions"]) and record["device"].startswith("cpu")
    assert record["seconds"] <= record["budget_s"] + 5 and record["revision"]


def test_every_stage_runs_dry_and_writes_the_schema(tmp_path):
    proc = dry_run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    found = records(tmp_path)
    assert list(found) == STAGES
    for name, record in found.items():
        check_schema(record, name)
        expected = ("skipped",) if name == "install" else ("ok", "skipped") if name == "server" else ("ok",)
        assert record["status"] in expected, (name, record["note"])
        assert record["rows"] or record["status"] == "skipped", name
    rows = {name: r["rows"] for name, r in found.items()}
    assert {r["case"] for r in rows["train"]} == {
        "a_reference_fp32_nchw",
        "b_eager_bf16_channels_last",
        "d_fastpix_graphs_eager",
        "e_fastpix_graphs_triton",
    }
    assert all(r["img_per_s"] > 0 for r in rows["train"] + rows["inference"])
    assert all(r["mfu"] > 0 and "measured" in r["roof"] for r in rows["train"] + rows["compile"])
    assert {(r["backend"], r["way"]) for r in rows["inference"]} == {
        (b, w) for b in ("eager", "triton") for w in ("eager", "predictor")
    }
    assert all(
        r["triton_ms"] > 0 and r["cudnn_ms"] > 0 and r["choice"] in ("triton", "cudnn") for r in rows["conv_blocks"]
    )
    for name in ("correctness", "conv_correctness"):  # no GPU here: every gpu-marked test is skipped, with reason
        assert rows[name] and all(r["outcome"] == "skipped" and "CUDA" in r["message"] for r in rows[name])
    summary = (tmp_path / "summary.md").read_text()
    for name in STAGES:
        assert f"| {name} | {found[name]['status']} |" in summary
    # the dry run takes the suites' dry settings (tiny shapes) instead of setting their globals
    assert {r["batch"] for r in rows["train"]} == {1, 2}
    assert not [p for p in os.listdir(os.path.join(ROOT, "bench", "suites")) if p.startswith(".benchmarks")]


def test_a_stage_over_its_budget_is_killed_and_the_run_fails(tmp_path):
    proc = dry_run(tmp_path, "--stages", "environment,compile", "--budget", "compile=0.5", timeout=120)
    assert proc.returncode == 1 and "failed or out of budget: compile" in proc.stdout, proc.stdout[-2000:]
    found = records(tmp_path)
    assert found["environment"]["status"] == "ok"
    assert found["compile"]["status"] == "timeout" and "budget of 0.5 s" in found["compile"]["note"]
    for name, record in found.items():
        check_schema(record, name)
    assert "| compile | timeout |" in (tmp_path / "summary.md").read_text()


def test_a_failing_stage_fails_the_run_and_the_summary_says_why(tmp_path):
    """A stage whose code raises (here: torch cannot be imported in the stage's process) is recorded as failed with
    the error, the next stage still runs, and the kit exits 1 with the summary written."""
    broken = tmp_path / "broken"
    (broken / "torch").mkdir(parents=True)
    (broken / "torch" / "__init__.py").write_text("raise ImportError('injected: a broken torch')\n")
    out = tmp_path / "out"
    proc = dry_run(out, "--stages", "environment,install", env={"PYTHONPATH": str(broken)}, timeout=120)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    found = records(out)
    assert found["environment"]["status"] == "failed" and "injected: a broken torch" in found["environment"]["note"]
    assert found["install"]["status"] == "skipped"  # the other stage still ran
    summary = (out / "summary.md").read_text()
    assert "| environment | failed |" in summary and "| install | skipped |" in summary


def test_unknown_stage_names_are_refused(tmp_path):
    proc = dry_run(tmp_path, "--stages", "environment,trian", timeout=60)
    assert proc.returncode == 2 and "trian" in proc.stderr
