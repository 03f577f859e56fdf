"""The CPU fast path: runtime.py's device/precision decisions, the Predictor's compiled graphs (against eager, odd
sizes, batch invariance, bf16, built in the background while the first calls run eagerly), their on-disk cache key,
the fallbacks, and ONNX Runtime. The background machinery with stand-in compilers: test_compile_cache.py.

Compiling costs seconds per graph (a minute on a busy machine): the module compiles three graphs in all, two of
them in the compiler process the Predictor starts."""

import errno
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from tiny_models import perturb_batchnorms

from fastpix import runtime
from fastpix.config import COMPILE_PAYS_FROM_IMAGES
from fastpix.errors import ConfigError, DiskFull, MissingDependency
from fastpix.files import TMP_PREFIX
from fastpix.infer import compiled, compiled_builds, compiled_cache, compiled_packages, plan
from fastpix.infer.predictor import Predictor
from fastpix.models import define_G
from fastpix.runtime import cpu_has_native_bf16 as real_bf16_detection

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
    """A compiled fp32 instance-mode Predictor, its outputs for a batch of 2 odd-size images (one graph) after its
    package was built, and eager's for each image alone."""
    G = tiny_G()
    images = odd_images(2)
    predictor = Predictor(
        G, device="cpu", precision="fp32", norm_mode="instance", runtime="compiled", cache_dir=str(cache_root)
    )
    predictor(images, output_type="pt")  # answered eagerly; the package for this shape is asked for
    assert predictor.runner.wait(timeout=900)
    together = predictor(images, output_type="pt")
    eager = Predictor(G, device="cpu", precision="fp32", norm_mode="instance", runtime="eager")
    yield predictor, together, [eager(x, output_type="pt") for x in images]
    predictor.close()


def test_compiled_fp32_equals_eager_at_odd_sizes_whatever_the_batch(instance_fp32):
    predictor, together, eager = instance_fp32
    assert predictor.runtime == "compiled" and "2x64x64 compiled" in predictor.description
    assert predictor.runner.failures == {} and set(predictor.runner.loaded) == {(2, 3, 64, 64)}
    # Each image of the compiled batch equals eager's run of that image alone: batch-independent and exact.
    for got, want in zip(together, eager):
        assert got.shape == want.shape == (3, 37, 45)
        assert relative_error(got, want) < 1e-4


def test_the_package_lands_in_the_keyed_cache_folder_and_a_new_predictor_loads_it(
    instance_fp32, cache_root, monkeypatch
):
    predictor, together, _ = instance_fp32
    folder = cache_root / predictor.runner.key
    assert sorted(p.name for p in folder.glob("*.pt2")) == ["2x64x64.pt2"]  # 37×45 padded to U-Net 32's multiple
    # Built under a temporary name, renamed when whole; Inductor's build files not kept (only the package is run).
    assert sorted(p.name for p in folder.iterdir()) == ["2x64x64.pt2", "entry.json"]
    assert not [p for p in cache_root.iterdir() if p.name.startswith((".build-", TMP_PREFIX))]

    class NoCompiler:
        def __init__(self, *args):
            raise AssertionError("a cached package was built again")

    monkeypatch.setattr(compiled_builds, "CompilerProcess", NoCompiler)
    monkeypatch.setitem(plan.AUTO, "cpu", "compiled")  # the real default (conftest pins eager)
    again = Predictor(
        tiny_G(), device="cpu", precision="fp32", norm_mode="instance", cache_dir=str(cache_root), images=1
    )  # one image: compiling would not pay, loading the built package does
    assert again.runtime == "compiled"
    assert set(again.runner.loaded) == {(2, 3, 64, 64)}  # loaded up front: the first call is a steady one
    for got, want in zip(again(odd_images(2), output_type="pt"), together):
        assert torch.equal(got, want)
    again.close()


def test_a_package_copied_under_another_shapes_name_is_refused_before_it_runs(
    instance_fp32, cache_root, monkeypatch, caplog
):
    """Run on a 1×… input, the 2×… package would read out of bounds (a black image or NaNs): its own metadata says
    what it takes, so the file is removed and built again."""
    predictor, _, _ = instance_fp32
    folder = cache_root / predictor.runner.key
    shutil.copy(folder / "2x64x64.pt2", folder / "1x64x64.pt2")
    asked = []

    class Recorder:  # stands in for the compiler process: notes the build, which then fails
        def __init__(self, net, priority):
            self.priority = priority

        def build(self, shape, *args, patient=True):
            asked.append(shape)
            return "RuntimeError: not built in this test"

        def stop(self, at_once=False):
            pass

    monkeypatch.setattr(compiled_builds, "CompilerProcess", Recorder)
    with caplog.at_level(logging.WARNING, logger="fastpix"):
        again = Predictor(
            tiny_G(),
            device="cpu",
            precision="fp32",
            norm_mode="instance",
            runtime="compiled",
            cache_dir=str(cache_root),
        )  # loads both files it finds, checking each
        assert again.runner.wait(timeout=120)
    assert "1x64x64.pt2: it was built for 2x3x64x64 torch.float32" in caplog.text
    assert asked == [(1, 3, 64, 64)] and set(again.runner.loaded) == {(2, 3, 64, 64)}
    eager = Predictor(tiny_G(), device="cpu", precision="fp32", norm_mode="instance", runtime="eager")
    x = odd_images(1)[0]
    assert relative_error(again(x, output_type="pt"), eager(x, output_type="pt")) < 1e-4  # that size: eager
    again.close()
    os.remove(compiled_cache.failure_path(str(folder), (1, 3, 64, 64)))


def test_the_cache_key_changes_with_weights_mode_precision_torch_cpu_and_network_form(monkeypatch):
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
    monkeypatch.undo()
    # A package built before the output layer took its sub-pixel form (form 1) is not loaded for form 2's network.
    monkeypatch.setattr(compiled, "NETWORK_FORM", 1)
    assert compiled.cache_key(net, "running", "fp32") != key


def test_a_size_without_its_package_is_answered_at_once_eagerly_then_compiled_from_a_later_call(cache_root):
    """bf16 running mode: the first call runs the bf16 channels-last network eagerly while the package builds in the
    compiler process; once built, later calls run it, within bf16 rounding of the eager answer and of fp32."""
    G = tiny_G()
    x = odd_images(1)[0]
    predictor = Predictor(
        G, device="cpu", precision="bf16", norm_mode="running", runtime="compiled", cache_dir=str(cache_root)
    )
    reference = Predictor(G, device="cpu", precision="fp32", norm_mode="running", runtime="eager")
    assert predictor.description.startswith("cpu, bf16, compiled") and "BatchNorm folded" in predictor.description
    first = predictor(x, output_type="pt")
    assert predictor.compile_status()["building"] == ["1x64x64"]  # answered while its package is being built
    assert "1x64x64 building" in predictor.description
    assert predictor.runner.wait(timeout=900) and predictor.compile_status()["compiled"] == ["1x64x64"]
    package = predictor.runner.loaded[(1, 3, 64, 64)].package
    calls = []
    package.run = lambda t, run=package.run: calls.append(t.shape) or run(t)
    got, want = predictor(x, output_type="pt"), reference(x, output_type="pt")
    assert calls == [(1, 3, 64, 64)]  # the package ran
    assert relative_error(got, first) < 1e-2 and relative_error(got, want) < 1e-2
    grey = np.abs(predictor(x, output_type="np").astype(int) - reference(x, output_type="np").astype(int))
    assert grey.mean() <= 1.0
    predictor.close()


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
        Predictor(
            G, device="cpu", precision="bf16", norm_mode="instance", runtime="onnxruntime", cache_dir=str(tmp_path)
        )


def test_export_writes_a_package_that_torch_alone_loads_and_that_equals_the_predictor(tmp_path, capsys):
    """Also: the package's weights are frozen (oneDNN prepacks every conv: what makes the compiled path fast; a
    compile that quietly skips it still gives the right numbers), and the output folder holds the package alone
    (no Inductor build folders)."""
    from torch._dynamo.utils import counters

    from fastpix.cli import main
    from fastpix.store.weights import save_weights

    G = tiny_G(seed=3)
    save_weights(str(tmp_path / "run" / "latest_net_G.safetensors"), G)
    args = [
        "export",
        "--format",
        "pt2",
        "--checkpoint",
        str(tmp_path / "run"),
        "--out",
        str(tmp_path / "out"),
        "--norm-mode",
        "running",
        "--precision",
        "fp32",
        "--batch-size",
        "2",
    ]
    assert main(args + ["--image-size", "64x30"]) == 2
    assert "--image-size 64x30: this generator takes sides that are multiples of 32" in capsys.readouterr().err
    counters.clear()
    assert main(args + ["--image-size", "64x32"]) == 0
    assert "agrees with eager fp32 PyTorch" in capsys.readouterr().out
    convs = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in G.modules())
    assert counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"] == convs > 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["latest_net_G_2x64x32_fp32.pt2"]
    package = torch._inductor.aoti_load_package(str(tmp_path / "out" / "latest_net_G_2x64x32_fp32.pt2"))
    x = torch.rand(2, 3, 64, 32) * 2 - 1
    got = package(x.contiguous(memory_format=torch.channels_last))
    want = torch.stack(
        Predictor(G, device="cpu", precision="fp32", norm_mode="running", runtime="eager")(list(x), output_type="pt")
    )
    assert relative_error(got, want) < 1e-4


def test_batch_pieces_are_powers_of_two_up_to_one_image_per_thread():
    assert compiled.batch_pieces(1) == compiled.batch_pieces(2) == (2, 1)
    assert compiled.batch_pieces(6) == (4, 2, 1)
    assert compiled.batch_pieces(64) == (8, 4, 2, 1)


def test_a_torch_without_the_loader_class_loads_packages_through_the_public_loader(instance_fp32, monkeypatch):
    predictor, together, _ = instance_fp32
    path = compiled_cache.package_path(predictor.runner.folder, (2, 3, 64, 64))

    def other_signature(*args):
        raise TypeError("AOTIModelPackageLoader(): incompatible function arguments")

    monkeypatch.setattr(compiled_packages, "PACKAGE_LOADER", other_signature)
    x = torch.stack([torch.zeros(3, 64, 64), torch.ones(3, 64, 64) * 0.5]).contiguous(memory_format=torch.channels_last)
    public = compiled_packages.load_package(path)
    assert public.mismatch((2, 3, 64, 64), torch.float32, predictor.runner.key) is None  # its metadata, read too
    direct = public(x)
    monkeypatch.undo()
    assert torch.equal(direct, compiled_packages.load_package(path)(x))


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
        compiled_packages.build_package(
            net, torch.zeros(1, 3, 32, 32).contiguous(memory_format=torch.channels_last), str(target)
        )
    assert list(target.parent.iterdir()) == []  # neither the package, a temporary nor a build folder


def test_a_full_disk_while_writing_onnx_leaves_no_file_and_names_it(tmp_path, monkeypatch):
    pytest.importorskip("onnxscript")
    from fastpix.infer.norm_modes import inference_network
    from fastpix.infer.onnx_runtime import write_onnx

    monkeypatch.setattr(torch.onnx, "export", half_written_then_full("f"))
    target = tmp_path / "g.onnx"
    with pytest.raises(DiskFull, match=f"{target}: no space left on the device"):
        write_onnx(inference_network(tiny_G(), "running"), str(target), 32)
    assert list(tmp_path.iterdir()) == []
