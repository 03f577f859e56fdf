"""bench/cpu_compare.py's inference peers (bench/cpu_peers.py: ONNX Runtime fp32, OpenVINO f32 and bf16) at a tiny
size: each row computes what the eager fp32 network computes, from the same weights. The [test] extra installs both
(openvino through [bench]).

The peers run in a child process: OpenVINO's and ONNX Runtime's native thread pools stay alive in the process that
loaded them, and the test suite's process went on to crash (SIGSEGV) in a later test that mounts a tmpfs."""

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import cpu_peers  # noqa: E402 - a script of bench/, not a package

CHECK = r"""
import json, sys
import torch
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
import cpu_peers
from fastpix.infer.norm_modes import inference_network
from fastpix.models import define_G
from tiny_models import perturb_batchnorms

torch.set_num_threads(1)
torch.manual_seed(0)
net = inference_network(perturb_batchnorms(define_G(3, 3, 8, "unet_32", "batch", True, backend="eager")), "running")
x = torch.rand(2, 3, 32, 64) * 2 - 1
with torch.no_grad():
    want = net(x)
peers, precisions, skipped = cpu_peers.inference_peers(net, tuple(x.shape), sys.argv[3], 32)
errors = {name: float((torch.from_numpy(fn(cpu_peers.as_array(x))) - want).norm() / want.norm())
          for name, fn in peers.items()}
print(json.dumps({"errors": errors, "precisions": precisions, "skipped": skipped}))
"""


def test_the_inference_peers_equal_eager_fp32(tmp_path):
    for module in ("onnxruntime", "openvino"):  # found, not imported: neither is loaded into this process
        if cpu_peers.missing(module):
            pytest.skip(cpu_peers.missing(module))
    out = subprocess.run(
        [sys.executable, "-c", CHECK, os.path.join(ROOT, "bench"), os.path.join(ROOT, "tests"), str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["skipped"] == []
    assert got["precisions"] == {"p_onnxruntime_fp32": "fp32", "p_openvino_f32": "fp32", "p_openvino_bf16": "bf16"}
    for name, error in got["errors"].items():
        assert error < (2e-2 if got["precisions"][name] == "bf16" else 1e-4), (name, error)
    assert len(list(tmp_path.glob("peer_*.onnx"))) == 1  # one file for every peer, from the same weights


def test_a_peer_not_installed_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(cpu_peers.importlib.util, "find_spec", lambda name: None)
    assert cpu_peers.missing("openvino") == (
        "openvino not installed, its rows left out: pip install openvino (or 'fastpix[bench]')"
    )
    peers, precisions, skipped = cpu_peers.inference_peers(torch.nn.Identity(), (1, 3, 32, 32), "unused", 32)
    assert peers == precisions == {} and len(skipped) == 2
