"""backend='triton' networks on the fused conv kernels (fastpix/models/fused_convs.py) against backend='eager':
no aten convolution runs, outputs and gradients agree, and training iterations leave the same weights."""

import pytest
import torch
import torch.nn as nn
from harness import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from fastpix.models import define_D, define_G
from fastpix.models.fused_convs import fused_forward_supported
from fastpix.train.flops import conv_flops
from fastpix.train.step import Pix2PixStep

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _exact_and_untuned(monkeypatch, tmp_path):
    """No TF32 anywhere, default block sizes, any tuning cache (per-layer choices on a GPU) in tmp_path."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setenv("FASTPIX_CONV_AUTOTUNE", "0")
    monkeypatch.setenv("FASTPIX_TUNING_CACHE", str(tmp_path / "conv_tuning.json"))


class AtenOps(TorchDispatchMode):
    """Records the name of every aten operator dispatched while active."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.name())
        return func(*args, **(kwargs or {}))


def pair(factory, *args, **kwargs):
    """(eager, triton) networks with identical weights, γ and β moved off (1, 0) so that they matter."""
    eager = factory(*args, backend="eager", **kwargs).to(DEVICE).train()
    with torch.no_grad():
        for m in eager.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
    fused = factory(*args, backend="triton", **kwargs).to(DEVICE).train()
    fused.load_state_dict(eager.state_dict())
    return eager, fused


def assert_same_state(eager, fused, what, scale):
    a, b = eager.state_dict(), fused.state_dict()
    for k in a:
        if a[k].is_floating_point():
            assert_close(b[k], a[k], torch.float32, f"{what} {k}", scale=scale)
        else:
            assert torch.equal(a[k], b[k]), f"{what} {k}"


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_triton_networks_run_no_aten_convolution(norm):
    """unet_32 (ngf 4) and basic D (ndf 4), forward and backward, with every layer on the Triton kernels (on a GPU
    the measured choice could pick cuDNN for some; here it is forced): no aten convolution is dispatched, and
    output and parameter gradients equal the eager network's."""
    for (eager, fused), shape in (
        (pair(define_G, 3, 3, 4, "unet_32", norm, False), (1, 3, 32, 32)),
        (pair(define_D, 6, 4, "basic", norm=norm), (1, 6, 32, 32)),
    ):
        assert fused_forward_supported(fused)
        x = torch.randn(shape).to(DEVICE)
        grad = torch.randn(eager(x).shape).to(DEVICE)
        eager.zero_grad()
        (eager(x) * grad).sum().backward()
        fused.fused_forward.tuning.force = lambda key: "triton"
        with AtenOps() as ops:
            out = fused(x)
            (out * grad).sum().backward()
        assert not [name for name in ops.names if "convolution" in name], sorted(ops.names)
        assert_close(out, eager(x), torch.float32, "output", scale=10)
        grads = dict(eager.named_parameters())
        for k, p in fused.named_parameters():
            assert_close(p.grad, grads[k].grad, torch.float32, f"grad {k}", scale=100)


def test_two_training_iterations_match_eager():
    """Two Pix2PixStep iterations (G and D forward/backward on the fused convs, both Adam steps) leave the same
    weights and running statistics as eager. Adam moves each weight by ≈ lr = 2e-4 a step whatever the size of
    its gradient, so a wrong gradient shows at that scale; the tolerance is 5e-5."""
    G_e, G_f = pair(define_G, 3, 3, 4, "unet_32", "batch", False)
    D_e, D_f = pair(define_D, 6, 4, "basic")
    step_e = Pix2PixStep(G_e, D_e, device_type=torch.device(DEVICE).type)
    step_f = Pix2PixStep(G_f, D_f, device_type=torch.device(DEVICE).type)
    for _ in range(2):
        A = (torch.rand(1, 3, 32, 32) * 2 - 1).to(DEVICE)
        B = (torch.rand(1, 3, 32, 32) * 2 - 1).to(DEVICE)
        losses_e, losses_f = step_e(A, B), step_f(A, B)
        for k in losses_e:
            assert_close(losses_f[k], losses_e[k], torch.float32, f"loss {k}", scale=10)
    assert_same_state(G_e, G_f, "G after two steps", scale=5)
    assert_same_state(D_e, D_f, "D after two steps", scale=5)


def test_module_path_where_the_fused_convs_do_not_apply():
    """FLOP counting runs on the meta device through the modules' hooks; a layer the fused path does not know (an
    instance norm keeping running statistics) keeps the module path."""
    G_e, G_f = pair(define_G, 3, 3, 4, "unet_32", "batch", False)
    assert conv_flops(G_f, (1, 3, 32, 32)) == conv_flops(G_e, (1, 3, 32, 32)) > 0
    D = define_D(6, 4, "basic", norm="instance", backend="triton")
    assert fused_forward_supported(D)
    D.model[3] = nn.InstanceNorm2d(D.model[3].num_features, track_running_stats=True)
    assert not fused_forward_supported(D)


@pytest.mark.parametrize("choose, norm", [("cudnn", "batch"), ("alternate", "batch"), ("alternate", "instance")])
def test_cudnn_fallback_layers_match_eager(choose, norm):
    """The per-layer cuDNN fallback (forced here; on a GPU it is measured): all layers, or every other one mixed
    with the fused kernels, give eager's output, gradients and running statistics. The choice is forced through
    each network's own ConvTuning."""
    calls = []

    def chooser(key):
        calls.append(key)
        return "cudnn" if choose == "cudnn" or len(calls) % 2 else "triton"

    for (eager, fused), shape in (
        (pair(define_G, 3, 3, 4, "unet_32", norm, False), (1, 3, 32, 32)),
        (pair(define_D, 6, 4, "basic", norm=norm), (1, 6, 32, 32)),
    ):
        x = torch.randn(shape).to(DEVICE)
        out_e = eager(x)
        grad = torch.randn(out_e.shape).to(DEVICE)
        (out_e * grad).sum().backward()
        fused.fused_forward.tuning.force = chooser
        with AtenOps() as ops:
            out = fused(x)
            (out * grad).sum().backward()
        assert "aten::convolution" in ops.names
        assert_close(out, out_e, torch.float32, "output", scale=10)
        grads = dict(eager.named_parameters())
        for k, p in fused.named_parameters():
            assert_close(p.grad, grads[k].grad, torch.float32, f"grad {k}", scale=100)
        assert_same_state(eager, fused, "running stats", scale=10)


def test_a_layer_whose_triton_kernels_fail_runs_on_cudnn(monkeypatch):
    """A Triton kernel that fails to compile or launch (injected here for the stride-1 convs) puts that layer on
    cuDNN/aten with one warning per layer, recorded in tune_layers' choices; the results stay eager's."""
    import warnings

    from fastpix.kernels import conv_bn_act as cba
    from fastpix.models import tune_layers

    launch = cba.conv_bn_act

    def failing(x, weight, bias=None, stride=1, *args, **kwargs):
        if stride == 1:
            raise RuntimeError("injected: PTX assembly aborted")
        return launch(x, weight, bias, stride, *args, **kwargs)

    monkeypatch.setattr(cba, "conv_bn_act", failing)
    eager, fused = pair(define_D, 6, 4, "basic")
    x = torch.randn(2, 6, 32, 32).to(DEVICE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        choices = tune_layers(fused, x)
        out = fused(x)
        out.sum().backward()
    failed = [key for key, choice in choices.items() if choice.startswith("cudnn (triton failed: RuntimeError")]
    assert len(choices) == 5 and len(failed) == 2 and all("s1p1" in key for key in failed)  # D's last two convs
    assert sum("injected" in str(w.message) for w in caught) == 2
    assert all(choice == "triton" for key, choice in choices.items() if key not in failed)
    out_e = eager(x)
    out_e.sum().backward()
    assert_close(out, out_e, torch.float32, "output", scale=10)
    grads = dict(eager.named_parameters())
    for name, p in fused.named_parameters():
        assert_close(p.grad, grads[name].grad, torch.float32, f"grad {name}", scale=100)


def test_tuning_changes_no_state_and_the_path_is_fixed_at_build():
    """tune_layers restores buffers (running statistics, counters) and gradients; the forward path is decided at
    build time (a U-Net with a layer the fused convs do not know is re-decided explicitly, never per forward)."""
    from fastpix.models import set_forward_path, tune_layers

    D = define_D(6, 4, "basic", backend="triton").to(DEVICE).train()
    assert D.forward_path == "fused convs" and define_D(6, 4, "basic", backend="eager").forward_path == "eager"
    before = {k: v.clone() for k, v in D.state_dict().items()}
    x = torch.randn(2, 6, 32, 32).to(DEVICE)
    rng = torch.get_rng_state()
    assert len(tune_layers(D, x)) == 5
    for k, v in D.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in D.parameters()) and torch.equal(torch.get_rng_state(), rng)
    G = define_G(3, 3, 4, "unet_32", "batch", True, backend="triton")
    assert G.forward_path == "fused convs"
    G.model.model[1].model[0] = nn.SiLU()
    with pytest.raises(ValueError, match=r"layer model.model.1.model.0 \(SiLU\(\)\) of this UnetGenerator"):
        set_forward_path(G, strict=True)  # what define_G does: refused, naming the layer
    assert set_forward_path(G) == "fused norms, aten convs" and G.fused_forward is None  # a rebuilt copy


def test_each_network_owns_its_layer_choices():
    """The per-layer choices, forced choices and failures live in each network's own ConvTuning: forcing cuDNN on
    one network leaves another network of the same layers on the Triton kernels, and tune_layers reports only the
    network it ran."""
    from fastpix.models import tune_layers

    first = define_D(6, 4, "basic", backend="triton").to(DEVICE).train()
    second = define_D(6, 4, "basic", backend="triton").to(DEVICE).train()
    assert first.fused_forward.tuning is not second.fused_forward.tuning
    first.fused_forward.tuning.force = lambda key: "cudnn"
    first.fused_forward.tuning.failures["a layer of the first network"] = "RuntimeError: injected"
    x = torch.randn(1, 6, 32, 32).to(DEVICE)
    with AtenOps() as ops:
        first(x)
    assert "aten::convolution" in ops.names
    with AtenOps() as ops:
        choices = tune_layers(second, x)
    assert not [name for name in ops.names if "convolution" in name], sorted(ops.names)
    assert len(choices) == 5 and set(choices.values()) == {"triton"}
    assert second.fused_forward.tuning.failures == {}


def test_the_tuning_step_measures_each_layer_once_and_keeps_the_faster(tmp_path):
    """With a timer (on a GPU CUDA's; here a CPU clock, under which the interpreted kernels are far slower than
    aten) the tuning step times each layer forward + backward both ways on copies of its own inputs, keeps the
    faster, and caches it in the machine's timings file: a second network reads it without measuring, a later
    forward measures nothing, and the outputs still equal eager's."""
    import time

    from fastpix.kernels.conv_tuning import ConvTuning
    from fastpix.models import set_forward_path, tune_layers
    from fastpix.models.tuning import MachineTimings

    measured = []

    def timer(step):
        step()  # the first call builds what later ones reuse, as do_bench's warm-up
        start = time.perf_counter()
        step()
        measured.append(time.perf_counter() - start)
        return measured[-1]

    path = str(tmp_path / "timings.json")
    eager, fused = pair(define_D, 6, 4, "basic")
    set_forward_path(fused, tuning=ConvTuning(MachineTimings(path), timer))
    x = torch.randn(2, 6, 32, 32).to(DEVICE)
    choices = tune_layers(fused, x)
    assert len(choices) == 5 and len(measured) == 10  # both ways, once per layer
    timings = MachineTimings(path)
    for key, choice in choices.items():
        entry = timings.get("layer", key)
        assert choice == entry["choice"] == ("triton" if entry["triton_ms"] <= entry["cudnn_ms"] else "cudnn")
    other = define_D(6, 4, "basic", backend="triton").to(DEVICE).train()
    set_forward_path(other, tuning=ConvTuning(MachineTimings(path), timer))
    assert tune_layers(other, x) == choices and len(measured) == 10  # read from the file: nothing measured again
    out = fused(x)
    out.sum().backward()
    assert len(measured) == 10  # a forward outside the tuning step measures nothing
    out_e = eager(x)
    out_e.sum().backward()
    assert_close(out, out_e, torch.float32, "output", scale=10)
    grads = dict(eager.named_parameters())
    for name, p in fused.named_parameters():
        assert_close(p.grad, grads[name].grad, torch.float32, f"grad {name}", scale=100)


def test_importing_the_models_imports_no_kernel():
    """Triton reads TRITON_INTERPRET when it and a kernel module are imported, and the CLI sets it on a CPU (backend
    triton) after importing fastpix's models: importing them, and building an eager network, must import neither."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, fastpix.cli, fastpix.models, fastpix.train.engine; "
        "fastpix.models.define_G(3, 3, 4, 'unet_32'); "
        "print(sorted(m for m in sys.modules if m.startswith('fastpix.kernels') or m == 'triton'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
