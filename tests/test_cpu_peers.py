"""bench/cpu_compare.py's inference peers (bench/cpu_peers.py: ONNX Runtime fp32, OpenVINO f32 and bf16) at a tiny
size: each row computes what the eager fp32 network computes, from the same weights. The [test] extra installs both
(openvino through [bench])."""
import os
import sys

import pytest
import torch

from fastpix.infer.norm_modes import inference_network
from fastpix.models import define_G
from tiny_models import perturb_batchnorms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import cpu_peers  # noqa: E402 - a script of bench/, not a package

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_inference_peers_equal_eager_fp32(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    torch.manual_seed(0)
    net = inference_network(perturb_batchnorms(define_G(3, 3, 8, "unet_32", "batch", True, backend="eager")),
                            "running")
    x = torch.rand(2, 3, 32, 64) * 2 - 1
    with torch.no_grad():
        want = net(x)
    peers, precisions, skipped = cpu_peers.inference_peers(net, tuple(x.shape), str(tmp_path), 32)
    assert skipped == []
    assert precisions == {"p_onnxruntime_fp32": "fp32", "p_openvino_f32": "fp32", "p_openvino_bf16": "bf16"}
    for name, fn in peers.items():
        got = torch.from_numpy(fn(cpu_peers.as_array(x)))
        error = float((got - want).norm() / want.norm())
        assert error < (2e-2 if precisions[name] == "bf16" else 1e-4), (name, error)
    assert len(list(tmp_path.glob("peer_*.onnx"))) == 1  # one file for every peer, from the same weights


def test_a_peer_not_installed_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(cpu_peers.importlib.util, "find_spec", lambda name: None)
    assert cpu_peers.missing("openvino") == ("openvino not installed, its rows left out: pip install openvino "
                                             "(or 'fastpix[bench]')")
    peers, precisions, skipped = cpu_peers.inference_peers(torch.nn.Identity(), (1, 3, 32, 32), "unused", 32)
    assert peers == precisions == {} and len(skipped) == 2
