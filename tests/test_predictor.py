"""Predictor: checkpoints in, norm modes against the module they stand for, seeded dropout, sizes, types, files."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_models import perturb_batchnorms
from torch.nn.modules.batchnorm import _BatchNorm

from fastpix.config import ModelConfig
from fastpix.data.transforms import to_image_array, to_tensor
from fastpix.errors import CheckpointError, ConfigError
from fastpix.files import atomic_write_json
from fastpix.infer.image_files import predict_files
from fastpix.infer.images import pad_to
from fastpix.infer.plan import plan_execution
from fastpix.infer.predictor import Predictor
from fastpix.models import define_G
from fastpix.store.architecture import infer_architecture
from fastpix.store.weights import load_into, save_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def generator(netG="unet_32", norm="batch", dropout=False, input_nc=3, output_nc=3):
    """A tiny generator whose BatchNorms have non-trivial affine and running statistics."""
    return perturb_batchnorms(define_G(input_nc, output_nc, 4, netG, norm, dropout, backend="eager"))


def batch(n, h=32, w=32, c=3):
    return torch.rand(n, c, h, w) * 2 - 1


def random_image(w, h):
    return Image.fromarray(np.random.default_rng(w * 1000 + h).integers(0, 256, (h, w, 3), dtype=np.uint8))


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ---- checkpoints -----------------------------------------------------------------------------------------------------


def test_from_run_folder_reads_config_json(tmp_path):
    G = generator("unet_64", "batch", dropout=False)
    run = tmp_path / "run"
    save_weights(str(run / "latest_net_G.safetensors"), G)
    # no_dropout cannot be read from weights; 'compile' is a training-only backend that inference must ignore
    model = dataclasses.asdict(ModelConfig(netG="unet_64", ngf=4, norm="batch", no_dropout=True, backend="compile"))
    atomic_write_json(str(run / "config.json"), {"model": model, "data": {}, "train": {}})
    predictor = Predictor.from_checkpoint(run, norm_mode="running")
    assert not any(isinstance(m, torch.nn.Dropout) for m in predictor.generator.modules())
    x = batch(2, 64, 64)
    close(torch.stack(predictor(list(x), output_type="pt")), G.eval()(x))


def test_from_a_trained_run_folder(tiny_data, tmp_path):
    from fastpix.config import DataConfig, TrainConfig
    from fastpix.train.loop import train

    model = ModelConfig(netG="unet_32", ngf=4, ndf=4, no_dropout=True)
    data = DataConfig(dataroot=tiny_data, load_size=32, crop_size=32, num_threads=0)
    run = train(
        model, data, TrainConfig(name="run", checkpoints_dir=str(tmp_path), max_iters=2, seed=3), progress=False
    )
    predictor = Predictor.from_checkpoint(run)
    G = define_G(3, 3, 4, "unet_32", "batch")
    load_into(G, f"{run}/latest_net_G.safetensors")
    x = batch(1)
    close(predictor(x[0], output_type="pt"), G.train()(x)[0])


@pytest.mark.parametrize(
    "netG,norm,input_nc,output_nc",
    [
        ("unet_32", "batch", 3, 3),
        ("unet_32", "instance", 1, 3),
        ("unet_64", "batch", 3, 1),
        ("unet_64", "instance", 3, 3),
        ("unet_32", "none", 3, 3),
        ("resnet_6blocks", "batch", 3, 3),
        ("resnet_6blocks", "instance", 1, 1),
    ],
)
def test_bare_reference_pth_architecture_is_inferred(tmp_path, netG, norm, input_nc, output_nc):
    G = generator(netG, norm, True, input_nc, output_nc)
    path = tmp_path / "latest_net_G.pth"
    torch.save({f"module.{k}": v for k, v in G.state_dict().items()}, path)  # as saved from DataParallel
    expected = dict(netG=netG, ngf=4, norm=norm, input_nc=input_nc, output_nc=output_nc)
    if netG.startswith("resnet"):
        expected["no_dropout"] = False
    assert infer_architecture(G.state_dict()) == expected
    predictor = Predictor.from_checkpoint(str(path), norm_mode="running")
    for (k, a), (k2, b) in zip(G.state_dict().items(), predictor.generator.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_bare_safetensors_in_a_reference_folder(tmp_path):
    G = generator("resnet_6blocks", "batch", dropout=False)
    save_weights(str(tmp_path / "latest_net_G.safetensors"), G)
    predictor = Predictor.from_checkpoint(tmp_path, norm_mode="running")  # a folder without config.json
    x = batch(1)
    close(predictor(x[0], output_type="pt"), G.eval()(x)[0])


def test_what_cannot_be_inferred_is_named(tmp_path):
    state = define_G(3, 3, 4, "unet_32", "batch").state_dict()
    del state["model.model.3.weight"]
    save_weights(str(tmp_path / "g.safetensors"), state)
    with pytest.raises(CheckpointError, match="cannot infer output_nc") as info:
        Predictor.from_checkpoint(tmp_path / "g.safetensors")
    assert "netG" not in str(info.value).split(";")[0]
    save_weights(str(tmp_path / "foreign.safetensors"), {"encoder.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match="cannot infer netG, ngf, norm, input_nc, output_nc"):
        Predictor.from_checkpoint(tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="does not fit"):  # given, but wrong: the strict load says so
        Predictor.from_checkpoint(
            tmp_path / "foreign.safetensors", netG="unet_32", ngf=4, norm="batch", input_nc=3, output_nc=3
        )


# ---- norm modes ------------------------------------------------------------------------------------------------------


def test_instance_mode_is_per_image_and_the_papers_protocol_at_batch_1():
    G = generator("unet_32", "batch")
    x = batch(8)
    outputs = Predictor(G, max_batch_size=8)(list(x), output_type="pt")
    alone = Predictor(G)
    reference = copy.deepcopy(G).train()
    for i in range(8):
        close(outputs[i], alone(x[i], output_type="pt"))
        close(outputs[i], reference(x[i : i + 1])[0])


def test_batch_mode_is_train_mode_over_the_batch_and_keeps_running_stats():
    G = generator("resnet_6blocks", "batch")
    before = {k: v.clone() for k, v in G.state_dict().items()}
    x = batch(4, 16, 16)
    outputs = Predictor(G, norm_mode="batch")(list(x), output_type="pt")
    close(torch.stack(outputs), copy.deepcopy(G).train()(x))
    assert all(torch.equal(v, before[k]) for k, v in G.state_dict().items())


@pytest.mark.parametrize("netG", ["unet_32", "resnet_6blocks"])
def test_running_mode_folds_batchnorm_and_equals_eval(netG):
    G = generator(netG, "batch", dropout=True)
    predictor = Predictor(G, norm_mode="running")
    assert not any(isinstance(m, _BatchNorm) for m in predictor.network.modules())
    assert any(isinstance(m, _BatchNorm) for m in G.modules())  # the checkpoint's module is untouched
    x = batch(3)
    close(torch.stack(predictor(list(x), output_type="pt")), G.eval()(x))


# ---- dropout ---------------------------------------------------------------------------------------------------------


def test_seeded_dropout_does_not_depend_on_the_batch():
    G = generator("unet_64", "batch", dropout=True)
    a, b, c = (batch(1, 64, 64)[0] for _ in range(3))
    together = Predictor(G, dropout=True, max_batch_size=8)([a, b, c], seed=7, output_type="pt")
    # another neighbour of another size, one image per batch: images 0 and 2 keep their masks
    apart = Predictor(G, dropout=True, max_batch_size=1)([a, batch(1, 40, 90)[0], c], seed=7, output_type="pt")
    close(together[0], apart[0])
    close(together[2], apart[2])
    predictor = Predictor(G, dropout=True)
    assert not torch.allclose(predictor(a, seed=8, output_type="pt"), together[0])
    assert not torch.allclose(Predictor(G)(a, output_type="pt"), together[0])
    first, picked = predictor(a, output_type="pt", return_seeds=True)
    assert isinstance(picked, int)
    assert torch.equal(predictor(a, seed=picked, output_type="pt"), first)
    assert not torch.allclose(predictor(a, seed=picked + 1, output_type="pt"), first)


def test_a_seed_per_image_equals_each_image_alone():
    G = generator("unet_64", "batch", dropout=True)  # unet_32 has no block that carries dropout
    x = batch(3, 64, 64)
    predictor = Predictor(G, dropout=True, max_batch_size=8)
    together, seeds = predictor(list(x), seed=[11, 12, None], output_type="pt", return_seeds=True)
    assert seeds[:2] == [11, 12] and isinstance(seeds[2], int)
    close(torch.stack(together), torch.stack(predictor(list(x), seed=seeds, output_type="pt")))
    for i in range(3):  # a list of seeds makes each image a request of its own: noise index 0
        close(together[i], predictor(x[i], seed=seeds[i], output_type="pt"))
    assert not torch.allclose(together[0], predictor(x[0], seed=12, output_type="pt"))
    with pytest.raises(ValueError, match="seed has 2 entries for 3 images"):
        predictor(list(x), seed=[1, 2])


def test_fastpix_predictor_is_lazy():
    import subprocess
    import sys

    code = (
        "import sys, fastpix; assert 'torch' not in sys.modules; "
        "from fastpix.infer.predictor import Predictor; assert fastpix.Predictor is Predictor"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    star = (
        "from fastpix import *; from fastpix.infer.requests import ImageRequest as R, ImageResult as S; "
        "from fastpix.infer.predictor import Predictor as P; "
        "assert (Predictor, ImageRequest, ImageResult) == (P, R, S)"
    )
    subprocess.run([sys.executable, "-c", star], check=True)


def test_warmup_runs_the_network_and_changes_nothing():
    G = generator("unet_32", "batch")
    predictor = Predictor(G)
    x = batch(2)
    before = predictor(list(x), output_type="pt")
    assert predictor.warmup((300, 200)) is predictor
    for a, b in zip(predictor(list(x), output_type="pt"), before):
        assert torch.equal(a, b)


# ---- sizes, input and output types -----------------------------------------------------------------------------------


def test_any_size_comes_back_at_its_size():
    predictor = Predictor(generator("unet_32", "instance"))
    assert predictor(random_image(300, 200)).size == (300, 200)
    assert predictor(random_image(300, 200), resize=(64, 32)).size == (300, 200)
    for w, h in [(5, 3), (1, 40), (33, 1)]:  # pads beyond one reflection; a side of 1 is replicated
        assert predictor(random_image(w, h), output_type="np").shape == (h, w, 3)


def test_padding_reflects_in_steps_and_keeps_the_image_centred():
    x = batch(1, 3, 5)
    padded = pad_to(x, (32, 32))
    assert padded.shape[-2:] == (32, 32)
    assert torch.equal(padded[..., 14:17, 13:18], x)
    assert torch.equal(pad_to(x, (5, 8)), F.pad(x, (1, 2, 1, 1), mode="reflect"))


def test_input_types_agree_and_mixed_sizes_group(tmp_path):
    predictor = Predictor(generator("unet_32", "batch"))
    image = random_image(45, 70)
    image.save(tmp_path / "in.png")
    as_pil = predictor(image, output_type="pt")
    for other in (np.asarray(image), str(tmp_path / "in.png"), tmp_path / "in.png", to_tensor(image)):
        assert torch.equal(predictor(other, output_type="pt"), as_pil)
    mixed = [random_image(300, 200), image, random_image(32, 32), random_image(301, 199)]
    outputs = predictor(mixed, output_type="pt")
    for img, out in zip(mixed, outputs):
        assert out.shape == (3, img.height, img.width)
        close(out, predictor(img, output_type="pt"))


def test_output_types():
    predictor = Predictor(generator("resnet_6blocks", "batch"))
    image = random_image(30, 22)
    pt, arr, pil = (predictor(image, output_type=t) for t in ("pt", "np", "pil"))
    assert pt.dtype == torch.float32 and pt.shape == (3, 22, 30)
    assert arr.dtype == np.uint8 and arr.shape == (22, 30, 3)
    assert np.array_equal(arr, to_image_array(pt)) and np.array_equal(np.asarray(pil), arr)
    assert isinstance(predictor([image], output_type="np"), list)
    with pytest.raises(ValueError, match="output_type"):
        predictor(image, output_type="jpg")


def test_cpu_refuses_half_precision_and_runs_a_graph_size_without_graphs():
    G = generator()
    with pytest.raises(ConfigError, match="--precision 'fp16' needs a CUDA device; on cpu fp32 and bf16 are"):
        Predictor(G, device="cpu", precision="fp16")
    with pytest.raises(ConfigError, match="--precision 'fp8' is not one of fp32, bf16, fp16"):
        Predictor(G, device="cpu", precision="fp8")
    with pytest.raises(ConfigError, match="--norm-mode 'train' is not one of"):
        Predictor(G, device="cpu", norm_mode="train")
    # A graph size asked for on a CPU: decided once, when the Predictor is built; it runs without CUDA graphs and
    # says why, and its outputs are the plain ones.
    x = list(batch(3))
    asked = Predictor(G, device="cpu", precision="fp32", graph_size=(32, 32), max_batch_size=100)
    assert asked.plan.graph_size is None and not asked.plan.cuda_graphs and asked.graphs is None
    assert asked.plan.graphs_off == "CUDA graphs need a CUDA device, not cpu"
    assert asked.max_batch_size == 100  # not cut to the largest graph bucket: there are no graphs
    plain = Predictor(G, device="cpu", precision="fp32")
    assert asked.plan == dataclasses.replace(plain.plan, graphs_off=asked.plan.graphs_off, max_batch_size=100)
    assert asked.description == plain.description
    for a, b in zip(asked.warmup()(x, output_type="pt"), plain(x, output_type="pt")):
        assert torch.equal(a, b)


def test_the_plan_is_decided_once_and_names_what_cannot_run():
    G = generator("unet_64", "batch", dropout=True)
    with pytest.raises(ConfigError, match="--runtime 'compiled': norm_mode 'batch' and dropout .* use --runtime eager"):
        Predictor(G, device="cpu", norm_mode="batch", runtime="compiled")
    with pytest.raises(ConfigError, match="--runtime 'compiled': .* use --runtime eager"):
        Predictor(G, device="cpu", dropout=True, runtime="compiled")
    with pytest.raises(ConfigError, match="--runtime 'onnxruntime' runs fp32, not bf16"):
        Predictor(G, device="cpu", precision="bf16", norm_mode="running", runtime="onnxruntime")
    # 'auto' with dropout on: eager, and the layout the precision wants (NCHW for fp32 on a CPU).
    p = Predictor(G, device="cpu", precision="fp32", dropout=True)
    assert (p.plan.runtime, p.plan.precision, p.plan.channels_last, p.plan.backend) == ("eager", "fp32", False, "eager")
    assert p.plan.device == torch.device("cpu") and p.runtime == "eager" and p.precision == "fp32"
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.plan.runtime = "compiled"
    with pytest.raises(AttributeError):
        p.precision = "bf16"  # what runs is read from the plan, never set after the fact


def test_the_plan_decides_cuda_graphs_from_the_size_asked_the_device_and_the_norm_mode(monkeypatch):
    """The one place that decides whether CUDA graphs run, checked without a GPU: plan_execution for a CUDA device
    (torch.cuda.is_available answered yes; the precision given, so that nothing asks the missing GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ask = dict(device="cuda", precision="fp32", graph_size=(30, 40), multiple=32, max_batch_size=100)
    on = plan_execution(**ask)
    assert (on.graph_size, on.graphs_off, on.max_batch_size) == ((32, 64), "", 64)  # padded; the largest bucket
    assert on.cuda_graphs and on.runtime == "eager" and on.channels_last
    for off in (plan_execution(**ask, norm_mode="batch"), plan_execution(**ask, dropout=True)):
        assert off.graph_size is None and not off.cuda_graphs and off.max_batch_size == 100
        assert "independent of each other (norm_mode 'instance' or 'running', dropout off)" in off.graphs_off
    not_asked = plan_execution(**{**ask, "graph_size": None})
    assert (not_asked.graph_size, not_asked.graphs_off, not_asked.max_batch_size) == (None, "", 100)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert plan_execution(**ask).graphs_off == "CUDA graphs need a CUDA device, not cuda"


# ---- files -----------------------------------------------------------------------------------------------------------


def test_predict_files_keeps_names_and_reports_bad_files(tmp_path):
    paths = []
    for i, (w, h) in enumerate([(64, 64), (70, 50), (64, 64)]):
        random_image(w, h).save(tmp_path / f"img{i}.jpg" if i == 1 else tmp_path / f"img{i}.png")
        paths.append(str(tmp_path / (f"img{i}.jpg" if i == 1 else f"img{i}.png")))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
    inputs = [paths[0], str(tmp_path / "corrupt.png"), paths[1], str(tmp_path / "missing.png"), paths[2]]
    predictor = Predictor(generator("unet_64", "batch", dropout=True), dropout=True)
    written, failed = predict_files(predictor, inputs, str(tmp_path / "out"), batch_size=2, progress=False, seed=5)
    assert [p.rsplit("/", 1)[1] for p in written] == ["img0.png", "img1.png", "img2.png"]
    assert [p for p, _ in failed] == [inputs[1], inputs[3]] and all(message for _, message in failed)
    # file k draws the noise of index k, whatever the batch size
    expected = predictor([Image.open(p) for p in paths], seed=5, output_type="np", indices=[0, 2, 4])
    for path, arr in zip(written, expected):
        assert np.array_equal(np.asarray(Image.open(path)), arr)


# ---- CUDA ------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_graphs_equal_eager():
    G = generator("unet_32", "batch")
    eager = Predictor(G, device="cuda", precision="fp32")
    graphed = Predictor(G, device="cuda", precision="fp32", graph_size=(32, 32), max_batch_size=12).warmup()
    assert sorted(graphed.graphs.graphs) == [1, 2, 4, 8, 16]  # every bucket captured before the first request
    assert graphed.plan.graph_size == (32, 32) and "CUDA graphs at 32x32" in graphed.description
    batch_mode = Predictor(G, device="cuda", precision="fp32", norm_mode="batch", graph_size=(32, 32))
    assert batch_mode.graphs is None and "no CUDA graphs (CUDA graphs pad requests" in batch_mode.description
    for n in (1, 3, 8, 12):
        x = list(batch(n))
        for a, b in zip(graphed(x, output_type="pt"), eager(x, output_type="pt")):
            close(a, b, 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("norm_mode", ["instance", "batch", "running"])
def test_cuda_bf16_is_close_to_cpu_fp32(norm_mode):
    G = generator("unet_32", "batch")
    x = list(batch(4))
    cpu = Predictor(G, device="cpu", norm_mode=norm_mode)(x, output_type="pt")
    gpu = Predictor(G, device="cuda", norm_mode=norm_mode)(x, output_type="pt")
    assert gpu[0].device.type == "cuda"
    for a, b in zip(gpu, cpu):  # bf16 autocast through 10 layers: ~1e-2 relative (benchmarks.md "How fastpix measures")
        assert (a.cpu() - b).norm() / b.norm() < 3e-2


# ---- fastpix predict -------------------------------------------------------------------------------------------------


def test_cli_predict_translates_folders_and_files_and_fails_on_unreadable_ones(tmp_path, capsys):
    from fastpix.cli import main

    G = generator("unet_32", "batch")
    save_weights(str(tmp_path / "g.pth"), G)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    images = {"in/a.png": random_image(40, 30), "in/sub/b.jpg": random_image(32, 32), "c.png": random_image(20, 50)}
    for name, image in images.items():
        image.save(tmp_path / name)
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    argv = [
        "predict",
        "--checkpoint",
        str(tmp_path / "g.pth"),
        "--input",
        str(tmp_path / "in"),
        str(tmp_path / "c.png"),
        "--output",
        str(out),
        "--batch-size",
        "2",
        "--norm-mode",
        "running",
        "--quiet",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "a.png" not in err
    predictor = Predictor(G, norm_mode="running")
    for name, target in [("in/a.png", "a.png"), ("in/sub/b.jpg", "sub/b.png"), ("c.png", "c.png")]:
        expected = predictor(Image.open(tmp_path / name), output_type="np")
        assert np.array_equal(np.asarray(Image.open(out / target)), expected), target
    (tmp_path / "in" / "broken.png").unlink()
    assert main(argv) == 0


def test_cli_predict_names_bad_flags(tmp_path, capsys):
    from fastpix.cli import main

    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "exit status is then 1" in " ".join(capsys.readouterr().out.split())
    random_image(32, 32).save(tmp_path / "a.png")
    save_weights(str(tmp_path / "g.safetensors"), generator())
    base = ["predict", "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit):
        main(base)
    assert "the following arguments are required: --checkpoint" in capsys.readouterr().err
    assert main(base + ["--checkpoint", str(tmp_path / "g.safetensors"), "--device", "cpu", "--precision", "fp16"]) == 2
    assert "fastpix predict: error: --precision 'fp16' needs a CUDA device" in capsys.readouterr().err
    assert (
        main(base + ["--checkpoint", str(tmp_path / "g.safetensors"), "--runtime", "compiled", "--norm_mode", "batch"])
        == 2
    )
    assert "fastpix predict: error: --runtime 'compiled': norm_mode 'batch'" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert (
        main(
            [
                "predict",
                "--input",
                str(tmp_path / "empty"),
                "--output",
                str(tmp_path / "out"),
                "--checkpoint",
                str(tmp_path / "g.safetensors"),
            ]
        )
        == 2
    )
    assert "no images in" in capsys.readouterr().err
    assert main(base + ["--checkpoint", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth" in capsys.readouterr().err
