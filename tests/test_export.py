"""ONNX export: the file onnxruntime runs gives the Predictor's results, at any batch and (multiple) size."""

import logging

import numpy as np
import pytest
import torch
from tiny_models import perturb_batchnorms
from torch.nn.modules.batchnorm import _BatchNorm

from fastpix.infer.predictor import Predictor
from fastpix.models import define_G
from fastpix.store.weights import save_weights

onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX checks need the 'onnx' extra")
pytest.importorskip("onnxscript", reason="ONNX export needs the 'onnx' extra")

pytestmark = pytest.mark.usefixtures("one_thread")


def generator(netG):
    return perturb_batchnorms(define_G(3, 3, 4, netG, "batch", True, backend="eager"))


def run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


def assert_matches_predictor(path, predictor, shapes):
    for n, h, w in shapes:
        x = torch.rand(n, 3, h, w) * 2 - 1
        expected = torch.stack(predictor(list(x), output_type="pt"))
        torch.testing.assert_close(run_onnx(path, x), expected, rtol=1e-4, atol=1e-5)


def test_cli_exports_instance_mode_with_dynamic_batch_and_size(tmp_path, capsys):
    from fastpix.cli import main

    G = generator("unet_32")
    save_weights(str(tmp_path / "run" / "latest_net_G.safetensors"), G)
    assert (
        main(["export", "--format", "onnx", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    )
    assert "onnxruntime agrees with PyTorch" in capsys.readouterr().out
    path = tmp_path / "out" / "latest_net_G.onnx"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["fastpix.multiple"] == "32"
    # dropout is off in an export, and instance mode is the paper's protocol at batch 1: per-image statistics
    assert_matches_predictor(path, Predictor(G, norm_mode="instance"), [(1, 32, 32), (3, 64, 96)])


def test_running_mode_resnet(tmp_path):
    from fastpix.export import export_onnx

    G = generator("resnet_6blocks")
    path = tmp_path / "g.onnx"
    export_onnx(G, str(path), "running")
    assert_matches_predictor(path, Predictor(G, norm_mode="running"), [(2, 20, 28), (1, 8, 12)])
    assert any(isinstance(m, _BatchNorm) for m in G.modules())  # the given generator is left as it was


def test_export_refuses_batch_mode_and_pth_still_works(tmp_path, capsys):
    from fastpix.cli import main
    from fastpix.export import export_onnx

    G = generator("unet_32")
    with pytest.raises(ValueError, match="norm_mode 'batch' cannot be exported"):
        export_onnx(G, str(tmp_path / "g.onnx"), "batch")
    assert main(["export", "--format", "onnx", "--out", str(tmp_path)]) == 2
    assert "fastpix export: error: give --name" in capsys.readouterr().err
    save_weights(str(tmp_path / "g.safetensors"), G)
    assert main(["export", "--checkpoint", str(tmp_path / "g.safetensors"), "--out", str(tmp_path / "pth")]) == 0
    state = torch.load(tmp_path / "pth" / "g.pth", weights_only=True)
    assert all(np.array_equal(state[k].numpy(), v.numpy()) for k, v in G.state_dict().items())


def test_onnx_export_writes_the_model_alone_and_no_library_noise(tmp_path, capsys, caplog, recwarn):
    """No <model>.tmp.data beside the model (the exporter's external weights), and none of the messages torch's
    exporter gives that say nothing to a user: a log warning per torchvision operator when torchvision is not
    installed, a FutureWarning of its own pytree code."""
    from fastpix.cli import main

    save_weights(str(tmp_path / "run" / "latest_net_G.safetensors"), generator("unet_32"))
    with caplog.at_level(logging.WARNING):
        assert (
            main(["export", "--format", "onnx", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
            == 0
        )
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["latest_net_G.onnx"]
    assert not [r.getMessage() for r in caplog.records if "torchvision" in r.getMessage()]
    assert not [str(w.message) for w in recwarn if issubclass(w.category, FutureWarning)]
    assert "onnxruntime agrees with PyTorch" in capsys.readouterr().out
