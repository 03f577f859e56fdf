"""`fastpix models download`: a pretrained generator is kept only once it has loaded strictly into the expected
architecture without unpickling anything but tensors; anything else is refused and removed, nothing in it run."""

import contextlib
import io
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from loopback import Mirror, serve

from fastpix import cli, pretrained
from fastpix.config import PRETRAINED_MODELS, ModelDownloadConfig
from fastpix.errors import CheckpointError
from fastpix.infer.predictor import Predictor
from fastpix.models import define_G
from fastpix.pretrained import Architecture, download_model

SMALL = Architecture(netG="unet_32", ngf=8, norm="batch", parameters=0)


@pytest.fixture
def small_registry(monkeypatch):
    """facades_label2photo as a unet_32 with ngf 8, so that the tests move kilobytes, not 218 MB."""
    monkeypatch.setitem(pretrained.ARCHITECTURES, "facades_label2photo", SMALL)


def pth(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def small_state():
    return define_G(3, 3, 8, "unet_32", "batch", True).state_dict()


def config(tmp_path, base, name="facades_label2photo", **kw):
    return ModelDownloadConfig(name=name, checkpoints_dir=str(tmp_path / "checkpoints"), mirror=base, retries=0, **kw)


def test_the_registry_is_the_references_unet_256_with_its_directions():
    for arch in pretrained.ARCHITECTURES.values():
        assert (arch.netG, arch.ngf, arch.norm, arch.input_nc, arch.output_nc) == ("unet_256", 64, "batch", 3, 3)
        assert sum(p.numel() for p in arch.build().parameters()) == arch.parameters == 54_413_955
    # The reference's README and docs/datasets.md: facades labels -> photo and day -> night run BtoA.
    assert PRETRAINED_MODELS == {
        "facades_label2photo": ("facades", "BtoA"),
        "sat2map": ("maps", "AtoB"),
        "map2sat": ("maps", "BtoA"),
        "edges2shoes": ("edges2shoes", "AtoB"),
        "day2night": ("night2day", "BtoA"),
    }


def test_a_good_generator_is_kept_where_predict_and_test_find_it(tmp_path, small_registry):
    state = small_state()
    with serve(Mirror({"/models-pytorch/facades_label2photo.pth": pth(state)})) as base:
        result = download_model(config(tmp_path, base), progress=False)
    folder = tmp_path / "checkpoints" / "facades_label2photo_pretrained"
    assert result.path == str(folder / "latest_net_G.pth") and os.listdir(folder) == ["latest_net_G.pth"]
    predictor = Predictor.from_checkpoint(str(folder), device="cpu", runtime="eager")
    loaded = predictor.generator.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert predictor(np.zeros((32, 32, 3), np.uint8)).size == (32, 32)


class Hostile:
    """Unpickling this creates the marker file (as code in a hostile pickle would do anything)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("form", ["torch.save", "pickle"])
def test_a_pickle_that_would_run_code_is_refused_unrun_and_removed(tmp_path, small_registry, form):
    marker = str(tmp_path / "ran")
    state = {**small_state(), "model.model.0.weight": Hostile(marker)}
    data = pth(state) if form == "torch.save" else pickle.dumps(state, protocol=2)
    with (
        serve(Mirror({"/models-pytorch/facades_label2photo.pth": data})) as base,
        pytest.raises(CheckpointError) as caught,
    ):
        download_model(config(tmp_path, base), progress=False)
    assert "pickled Python objects" in str(caught.value) and "\n" not in str(caught.value)
    assert not os.path.exists(marker)
    assert os.listdir(tmp_path) == []  # no checkpoints folder left: it was made for this download
    # The file is as hostile as it claims: an unrestricted load runs it.
    (tmp_path / "copy.pth").write_bytes(data)
    with contextlib.suppress(Exception):  # a plain pickle is no torch file: refused after it ran
        torch.load(str(tmp_path / "copy.pth"), weights_only=False)
    assert os.path.exists(marker)


def test_a_generator_of_another_architecture_is_refused(tmp_path):
    with (
        serve(Mirror({"/models-pytorch/sat2map.pth": pth(small_state())})) as base,
        pytest.raises(CheckpointError) as caught,
    ):
        download_model(config(tmp_path, base, name="sat2map"), progress=False)
    message = str(caught.value)
    assert message.startswith(f"{base}/models-pytorch/sat2map.pth: not a unet_256, ngf 64, batch norm")
    assert "keys missing" in message and len(message) < 400
    assert not os.path.exists(tmp_path / "checkpoints" / "sat2map_pretrained")


@pytest.mark.parametrize("body", [b"<html>moved</html>", "nan"], ids=["not-torch", "non-finite"])
def test_files_that_are_not_usable_weights_are_refused(tmp_path, small_registry, body):
    if body == "nan":
        state = small_state()
        state["model.model.0.weight"].fill_(float("nan"))
        body = pth(state)
    (tmp_path / "checkpoints" / "facades_label2photo_pretrained").mkdir(parents=True)
    with serve(Mirror({"/models-pytorch/facades_label2photo.pth": body})) as base, pytest.raises(CheckpointError):
        download_model(config(tmp_path, base), progress=False)
    assert os.listdir(tmp_path / "checkpoints" / "facades_label2photo_pretrained") == []


def test_an_existing_generator_is_left_alone_unless_force(tmp_path, small_registry):
    folder = tmp_path / "checkpoints" / "facades_label2photo_pretrained"
    folder.mkdir(parents=True)
    (folder / "latest_net_G.pth").write_bytes(b"mine")
    state = small_state()
    mirror = Mirror({"/models-pytorch/facades_label2photo.pth": pth(state)})
    with serve(mirror) as base:
        assert download_model(config(tmp_path, base), progress=False).present and mirror.requests == []
        download_model(config(tmp_path, base, force=True), progress=False)
    assert torch.equal(
        torch.load(str(folder / "latest_net_G.pth"))["model.model.0.weight"], state["model.model.0.weight"]
    )


def test_the_command_line(tmp_path, small_registry, capsys):
    with serve(Mirror({"/models-pytorch/facades_label2photo.pth": pth(small_state())})) as base:
        code = cli.main(
            [
                "models",
                "download",
                "facades_label2photo",
                "--checkpoints_dir",
                str(tmp_path / "checkpoints"),
                "--mirror",
                base,
            ]
        )
    assert code == 0
    out = capsys.readouterr().out
    assert "facades_label2photo_pretrained/latest_net_G.pth" in out and "--direction BtoA" in out
    assert cli.main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    for name, (dataset, direction) in PRETRAINED_MODELS.items():
        assert f"{name}: data set {dataset}, --direction {direction}" in listing
    shutil.rmtree(tmp_path / "checkpoints")
