"""`make gpu-check DRY=1`: every stage of the GPU kit runs on the CPU at tiny shapes and writes its record in the
one schema, so that a GPU window is never lost to a typo, a missing import or a wrong path."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import gpu_check  # noqa: E402

STAGES = [name for name, *_ in gpu_check.STAGES]


def dry_run(out, *args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTPIX_TEST")}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--dry", "--out", str(out),
                           *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


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
    dry_run(tmp_path)
    found = records(tmp_path)
    assert list(found) == STAGES
    for name, record in found.items():
        check_schema(record, name)
        expected = ("skipped",) if name == "install" else ("ok", "skipped") if name == "server" else ("ok",)
        assert record["status"] in expected, (name, record["note"])
        assert record["rows"] or record["status"] == "skipped", name
    rows = {name: r["rows"] for name, r in found.items()}
    assert {r["case"] for r in rows["train"]} == {"a_reference_fp32_nchw", "b_eager_bf16_channels_last",
                                                   "d_fastpix_graphs_eager", "e_fastpix_graphs_triton"}
    assert all(r["img_per_s"] > 0 for r in rows["train"] + rows["inference"])
    assert {(r["backend"], r["way"]) for r in rows["inference"]} == {(b, w) for b in ("eager", "triton")
                                                                     for w in ("eager", "predictor")}
    assert all(r["triton_ms"] > 0 and r["cudnn_ms"] > 0 and r["choice"] in ("triton", "cudnn")
               for r in rows["conv_blocks"])
    for name in ("correctness", "conv_correctness"):  # no GPU here: every gpu-marked test is skipped, with reason
        assert rows[name] and all(r["outcome"] == "skipped" and "CUDA" in r["message"] for r in rows[name])
    summary = (tmp_path / "summary.md").read_text()
    for name in STAGES:
        assert f"| {name} | {found[name]['status']} |" in summary


def test_a_stage_over_its_budget_is_killed_and_marked(tmp_path):
    dry_run(tmp_path, "--stages", "environment,compile", "--budget", "compile=0.5", timeout=120)
    found = records(tmp_path)
    assert found["environment"]["status"] == "ok"
    assert found["compile"]["status"] == "timeout" and "budget of 0.5 s" in found["compile"]["note"]
    for name, record in found.items():
        check_schema(record, name)
    assert "| compile | timeout |" in (tmp_path / "summary.md").read_text()
