"""The CPU fast path: runtime.py's device/precision decisions, the Predictor's compiled graphs (against eager, odd
sizes, batch invariance, bf16), their on-disk cache key, the fallbacks, and ONNX Runtime.

Compiling costs seconds per graph: the module compiles two graphs in all."""
import errno
import os
import warnings

import numpy as np
import pytest
import torch

from fastpix import runtime
from fastpix.config import COMPILE_PAYS_FROM_IMAGES
from fastpix.errors import ConfigError, DiskFull, MissingDependency
from fastpix.files import TMP_PREFIX
from fastpix.infer import compiled, plan
from fastpix.infer.predictor import Predictor
from fastpix.models import define_G
from fastpix.runtime import cpu_has_native_bf16 as real_bf16_detection
from tiny_models import perturb_batchnorms

pytestmark = pytest.mark.usefixtures("one_thread")


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def tiny_G(seed=0):
    torch.manual_seed(seed)
    return perturb_batchnorms(define_G(3, 3, 8, "unet_32", "batch", True, backend="eager"))


def odd_images(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 37, 45, generator=g) * 2 - 1 for _ in range(n)]


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("compiled")


@pytest.fixture(scope="module")
def instance_fp32(cache_root):
    """A compiled fp32 instance-mode Predictor, its outputs for a batch of 2 odd-size images (one graph), and
    eager's for each image alone."""
    G = tiny_G()
    images = odd_images(2)
    predictor = Predictor(G, device="cpu", precision="fp32", norm_mode="instance", runtime="compiled",
                          cache_dir=str(cache_root))
    together = predictor(images, output_type="pt")
    eager = Predictor(G, device="cpu", precision="fp32", norm_mode="instance", runtime="eager")
    return predictor, together, [eager(x, output_type="pt") for x in images]


def test_compiled_fp32_equals_eager_at_odd_sizes_whatever_the_batch(instance_fp32):
    predictor, together, eager = instance_fp32
    assert predictor.runtime == "compiled" and "compiled" in predictor.description
    assert predictor.runner.failed is None
    # Each image of the compiled batch equals eager's run of that image alone: batch-independent and exact.
    for got, want in zip(together, eager):
        assert got.shape == want.shape == (3, 37, 45)
        assert relative_error(got, want) < 1e-4


def test_the_package_lands_in_the_keyed_cache_folder_and_a_new_predictor_loads_it(instance_fp32, cache_root,
                                                                                 monkeypatch):
    predictor, together, _ = instance_fp32
    folder = cache_root / predictor.runner.key
    assert sorted(p.name for p in folder.glob("*.pt2")) == ["2x64x64.pt2"]  # 37×45 padded to U-Net 32's multiple
    assert not list(folder.glob(f"{TMP_PREFIX}*"))  # built under a temporary name, renamed when whole

    def no_build(*args):
        raise AssertionError("a cached package was built again")

    monkeypatch.setattr(compiled, "build_package", no_build)
    monkeypatch.setitem(plan.AUTO, "cpu", "compiled")  # the real default (conftest pins eager)
    again = Predictor(tiny_G(), device="cpu", precision="fp32", norm_mode="instance", cache_dir=str(cache_root),
                      images=1)  # one image: compiling would not pay, loading the built package does
    assert again.runtime == "compiled" and set(again.runner.packages) == {(2, 3, 64, 64)}  # loaded up front
    for got, want in zip(again(odd_images(2), output_type="pt"), together):
        assert torch.equal(got, want)


def test_a_package_that_no_longer_loads_is_built_again(cache_root):
    G = tiny_G(seed=5)
    x = torch.rand(3, 32, 32) * 2 - 1
    first = Predictor(G, device="cpu", precision="fp32", norm_mode="running", runtime="compiled",
                      cache_dir=str(cache_root))
    want = first(x, output_type="pt")
    path = first.runner.package_path((1, 3, 32, 32))
    with open(path, "r+b") as f:
        f.truncate(1000)  # a disk that filled up, a copy cut short
    again = Predictor(G, device="cpu", precision="fp32", norm_mode="running", runtime="compiled",
                      cache_dir=str(cache_root))
    assert torch.equal(again(x, output_type="pt"), want) and again.runner.failed is None


def test_the_cache_key_changes_with_weights_mode_precision_torch_and_cpu(monkeypatch):
    from fastpix.infer.norm_modes import inference_network

    net = inference_network(tiny_G(), "running")
    key = compiled.cache_key(net, "running", "fp32")
    assert compiled.cache_key(inference_network(tiny_G(), "running"), "running", "fp32") == key  # same weights
    other = inference_network(tiny_G(), "running")
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3
    assert compiled.cache_key(other, "running", "fp32") != key
    assert compiled.cache_key(net, "instance", "fp32") != key
    assert compiled.cache_key(net, "running", "bf16") != key
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert compiled.cache_key(net, "running", "fp32") != key
    monkeypatch.undo()
    monkeypatch.setattr(runtime, "cpu_features", lambda: "NO AVX")
    assert compiled.cache_key(net, "running", "fp32") != key


def test_compiled_bf16_running_mode_is_close_to_eager_fp32(cache_root):
    G = tiny_G()
    x = odd_images(1)[0]
    predictor = Predictor(G, device="cpu", precision="bf16", norm_mode="running", runtime="compiled",
                          cache_dir=str(cache_root))
    eager = Predictor(G, device="cpu", precision="fp32", norm_mode="running", runtime="eager")
    assert predictor.description.startswith("cpu, bf16, compiled") and "BatchNorm folded" in predictor.description
    got, want = predictor(x, output_type="pt"), eager(x, output_type="pt")
    assert relative_error(got, want) < 1e-2
    grey = np.abs(predictor(x, output_type="np").astype(int) - eager(x, output_type="np").astype(int))
    assert grey.mean() <= 1.0


def test_a_failed_compile_says_why_once_and_gives_the_eager_result(monkeypatch, cache_root):
    def broken(*args):
        raise RuntimeError("no C++ compiler\nmore detail")

    monkeypatch.setattr(compiled, "build_package", broken)
    G = tiny_G()
    predictor = Predictor(G, device="cpu", precision="fp32", norm_mode="running", runtime="compiled",
                          cache_dir=str(cache_root))
    x = odd_images(1)[0]
    with pytest.warns(RuntimeWarning, match=r"compiling the generator failed \(RuntimeError: no C\+\+ compiler\)"):
        got = predictor(x, output_type="pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor(x, output_type="pt")  # said once
    eager = Predictor(G, device="cpu", precision="fp32", norm_mode="running", runtime="eager")
    assert relative_error(got, eager(x, output_type="pt")) < 1e-6
    assert "compiling failed: RuntimeError: no C++ compiler" in predictor.description


def test_auto_compiles_only_where_images_are_independent(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setitem(plan.AUTO, "cpu", "compiled")  # the real default (conftest pins eager)
    assert plan.resolve_runtime("auto", cpu, "instance", False) == "compiled"
    assert plan.resolve_runtime(None, cpu, "running", False) == "compiled"
    assert plan.resolve_runtime("auto", cpu, "batch", False) == "eager"
    assert plan.resolve_runtime("auto", cpu, "instance", True) == "eager"
    assert plan.resolve_runtime("auto", torch.device("cuda"), "instance", False) == "eager"
    few, many = COMPILE_PAYS_FROM_IMAGES - 1, COMPILE_PAYS_FROM_IMAGES
    assert plan.resolve_runtime("auto", cpu, "instance", False, images=few) == "eager"  # compiling won't pay
    assert plan.resolve_runtime("auto", cpu, "instance", False, images=many) == "compiled"
    assert plan.resolve_runtime("compiled", cpu, "instance", False, images=1) == "compiled"  # asked for
    # A network whose packages are built already compiles for a single image: loading them costs ~0.1 s.
    assert plan.resolve_runtime("auto", cpu, "instance", False, images=1, cached=lambda: True) == "compiled"
    assert plan.resolve_runtime("auto", cpu, "instance", False, images=1, cached=lambda: False) == "eager"
    assert Predictor(tiny_G(), device="cpu", precision="fp32", images=few).runtime == "eager"
    with pytest.raises(ConfigError, match="--runtime 'compiled': norm_mode 'batch'"):
        plan.resolve_runtime("compiled", cpu, "batch", False)
    with pytest.raises(ConfigError, match="--runtime 'jit' is not one of"):
        plan.resolve_runtime("jit", cpu, "batch", False)


def test_bf16_detection_is_honest(monkeypatch):
    detect = real_bf16_detection
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    for flags, native in (({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True), ({"avx512f", "avx2"}, False)):
        monkeypatch.setattr(runtime, "_cpuinfo_flags", lambda flags=flags: flags)
        detect.cache_clear()
        assert detect() is native, flags
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(runtime, "_cpuinfo_flags", lambda: {"avx512_bf16"})
    detect.cache_clear()
    assert detect() is False
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.resolve_precision(None, "cpu") == "fp32" and runtime.channels_last("cpu", "fp32") is False
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.resolve_precision(None, "cpu") == "bf16" and runtime.channels_last("cpu", "bf16") is True
    assert runtime.resolve_precision("fp32", "cpu") == "fp32"
    detect.cache_clear()


def test_onnxruntime_missing_is_one_clear_message(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an install without the [onnx] extra sees
    with pytest.raises(MissingDependency, match=r"needs the optional package onnxruntime: pip install 'fastpix\[onnx"):
        Predictor(tiny_G(), device="cpu", norm_mode="running", runtime="onnxruntime")


def test_onnxruntime_equals_eager_fp32(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    G = tiny_G()
    images = odd_images(2)
    predictor = Predictor(G, device="cpu", norm_mode="instance", runtime="onnxruntime", cache_dir=str(tmp_path))
    assert predictor.description.startswith("cpu, fp32, onnxruntime") and "NCHW" in predictor.description
    eager = Predictor(G, device="cpu", precision="fp32", norm_mode="instance", runtime="eager")
    for got, want in zip(predictor(images, output_type="pt"), eager(images, output_type="pt")):
        assert relative_error(got, want) < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(predictor.runner.path)]  # nothing beside it
    with pytest.raises(ConfigError, match="runtime 'onnxruntime' runs fp32, not bf16"):
        Predictor(G, device="cpu", precision="bf16", norm_mode="instance", runtime="onnxruntime",
                  cache_dir=str(tmp_path))


def test_compiling_freezes_the_weights_so_onednn_prepacks_every_conv(cache_root):
    """Freezing is what makes the compiled path fast (weights prepacked once, conv + activation fused); a compile
    that quietly skips it still gives the right numbers, so check that the packing passes ran."""
    from torch._dynamo.utils import counters

    from fastpix.infer.norm_modes import inference_network

    net = inference_network(tiny_G(), "running")
    counters.clear()
    compiled.CompiledNetwork(net, "running", "fp32", cache_dir=str(cache_root))(torch.rand(1, 3, 64, 32))
    packed = counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"]
    convs = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in net.modules())
    assert packed == convs > 0


def test_export_writes_a_package_that_torch_alone_loads_and_that_equals_the_predictor(tmp_path, capsys):
    from fastpix.cli import main
    from fastpix.store.weights import save_weights

    G = tiny_G(seed=3)
    save_weights(str(tmp_path / "run" / "latest_net_G.safetensors"), G)
    args = ["export", "--format", "pt2", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "out"),
            "--norm-mode", "running", "--precision", "fp32", "--batch-size", "2"]
    assert main(args + ["--image-size", "64x30"]) == 2
    assert "--image-size 64x30: this generator takes sides that are multiples of 32" in capsys.readouterr().err
    assert main(args + ["--image-size", "64x32"]) == 0
    assert "agrees with eager fp32 PyTorch" in capsys.readouterr().out
    package = torch._inductor.aoti_load_package(str(tmp_path / "out" / "latest_net_G_2x64x32_fp32.pt2"))
    x = torch.rand(2, 3, 64, 32) * 2 - 1
    got = package(x.contiguous(memory_format=torch.channels_last))
    want = torch.stack(Predictor(G, device="cpu", precision="fp32", norm_mode="running", runtime="eager")(
        list(x), output_type="pt"))
    assert relative_error(got, want) < 1e-4


def test_batch_pieces_are_powers_of_two_up_to_one_image_per_thread():
    assert compiled.batch_pieces(1) == compiled.batch_pieces(2) == (2, 1)
    assert compiled.batch_pieces(6) == (4, 2, 1)
    assert compiled.batch_pieces(64) == (8, 4, 2, 1)


def test_a_torch_without_the_loader_class_loads_packages_through_the_public_loader(instance_fp32, monkeypatch):
    predictor, together, _ = instance_fp32
    path = predictor.runner.package_path((2, 3, 64, 64))

    def other_signature(*args):
        raise TypeError("AOTIModelPackageLoader(): incompatible function arguments")

    monkeypatch.setattr(compiled, "PACKAGE_LOADER", other_signature)
    x = torch.stack([torch.zeros(3, 64, 64), torch.ones(3, 64, 64) * 0.5]).contiguous(memory_format=torch.channels_last)
    direct = compiled.load_package(path)(x)
    monkeypatch.undo()
    assert torch.equal(direct, compiled.load_package(path)(x))


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def half_written_then_full(path_arg: str):
    """A writer that puts part of a file at the path it is given, then finds the disk full."""
    def write(*args, **kwargs):
        path = kwargs.get(path_arg) or args[2]
        with open(path, "wb") as f:
            f.write(b"half a file")
        no_space()
    return write


def test_a_full_disk_while_building_a_package_leaves_no_file_and_names_it(tmp_path, monkeypatch):
    from fastpix.infer.norm_modes import inference_network

    net, _ = compiled.prepared_network(inference_network(tiny_G(), "running"), "fp32")
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", half_written_then_full("package_path"))
    target = tmp_path / "cache" / "1x32x32.pt2"
    with pytest.raises(DiskFull, match=f"{target}: no space left on the device"):
        compiled.build_package(net, torch.zeros(1, 3, 32, 32).contiguous(memory_format=torch.channels_last),
                               str(target))
    assert [p.name for p in target.parent.iterdir() if not p.is_dir()] == []  # neither the package nor a temporary


def test_a_full_disk_while_writing_onnx_leaves_no_file_and_names_it(tmp_path, monkeypatch):
    pytest.importorskip("onnxscript")
    from fastpix.infer.norm_modes import inference_network
    from fastpix.infer.onnx_runtime import write_onnx

    monkeypatch.setattr(torch.onnx, "export", half_written_then_full("f"))
    target = tmp_path / "g.onnx"
    with pytest.raises(DiskFull, match=f"{target}: no space left on the device"):
        write_onnx(inference_network(tiny_G(), "running"), str(target), 32)
    assert list(tmp_path.iterdir()) == []
