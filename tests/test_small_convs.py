"""The matmul forms of small convs (fastpix/models/small_convs.py) against torch's convs, and the plan picking them."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastpix.models import define_D, define_G
from fastpix.models.small_convs import (
    MatmulConv2d,
    MatmulConvTranspose2d,
    matmul_conv2d,
    matmul_conv_transpose2d,
    plan_small_convs,
)
from fastpix.train.engine import TrainEngine
from fastpix.train.step import Pix2PixStep

pytestmark = pytest.mark.usefixtures("one_thread")

# (in, out, kernel, stride, padding, input H, W, bias, channels-last)
SHAPES = [
    (8, 6, 4, 2, 1, 6, 10, False, True),
    (5, 7, 3, 1, 1, 5, 4, True, False),
    (4, 3, 4, 2, 0, 7, 9, True, True),
    (16, 16, 4, 2, 1, 2, 2, True, True),
]
CASES = (
    [(False, shape) for shape in SHAPES]
    + [(True, shape) for shape in SHAPES]
    + [(True, (16, 16, 4, 2, 1, 1, 1, False, True))]
)  # the innermost U-Net block's transposed conv, at 1×1


def relative_error(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def gradients(fn, x, weight, bias):
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight) + ((bias,) if bias is not None else ())]
    out = fn(*leaves[:2], leaves[2] if bias is not None else None)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    return [out.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("transposed, shape", CASES)
def test_the_matmul_form_equals_torchs_conv_forward_and_backward(transposed, shape):
    cin, cout, k, s, p, h, w, with_bias, cl = shape
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = torch.randn(2, cin, h, w).contiguous(memory_format=fmt)
    weight = torch.randn((cin, cout, k, k) if transposed else (cout, cin, k, k)).contiguous(memory_format=fmt)
    bias = torch.randn(cout) if with_bias else None
    ours, theirs = (matmul_conv_transpose2d, F.conv_transpose2d) if transposed else (matmul_conv2d, F.conv2d)
    got = gradients(lambda a, b, c: ours(a, b, c, (s, s), (p, p)), x, weight, bias)
    want = gradients(lambda a, b, c: theirs(a, b, c, stride=s, padding=p), x, weight, bias)
    for g, r in zip(got, want):  # output, then the gradients of x, weight (and bias)
        assert g.shape == r.shape
        assert relative_error(g, r) < 1e-5


def test_under_bf16_autocast_the_matmul_form_stays_as_close_as_torchs_bf16_conv():
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(64, 32, 4, 2, 1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 64, 4, 4).contiguous(memory_format=torch.channels_last)
    exact = layer(x)
    with torch.autocast("cpu", torch.bfloat16):
        module = layer(x)
        layer.__class__ = MatmulConvTranspose2d
        ours = layer(x)
    assert ours.dtype == module.dtype == torch.bfloat16  # what the next layer sees does not change
    assert relative_error(ours.float(), exact) < 1e-2
    assert relative_error(ours.float(), exact) < 2 * relative_error(module.float(), exact)


def unet_32(seed=0):
    torch.manual_seed(seed)
    return define_G(3, 3, 8, "unet_32", "batch", True, backend="eager").train()


def test_the_plan_picks_exactly_the_convs_over_few_pixels_and_changes_no_result():
    net, twin = unet_32(), unet_32()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    # Batch 2 at 32²: the blocks at 2×2 and 1×1 pixels give matmuls of 8 and 2 columns; at 4×4 already 32.
    chosen = plan_small_convs(net, x, max_columns=8)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # running statistics untouched
    kinds = {name: type(m) for name, m in net.named_modules() if name in chosen}
    assert len(chosen) == 4 and set(chosen.values()) == {"matmul"}
    assert sorted(k.__name__ for k in kinds.values()) == [
        "MatmulConv2d",
        "MatmulConv2d",
        "MatmulConvTranspose2d",
        "MatmulConvTranspose2d",
    ]
    assert list(net.state_dict()) == list(twin.state_dict())  # same keys, for checkpoints
    out, want = net(x), twin(x)
    out.float().pow(2).mean().backward()
    want.float().pow(2).mean().backward()
    assert relative_error(out, want) < 1e-5
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        assert relative_error(p.grad, q.grad) < 1e-4, name
    assert all(
        isinstance(m, (MatmulConv2d, MatmulConvTranspose2d)) for name, m in net.named_modules() if name in chosen
    )


def engine(precision):
    torch.manual_seed(0)
    G, D = unet_32(), define_D(6, 8, "basic", backend="eager").train()
    return TrainEngine(Pix2PixStep(G, D, precision=precision, device_type="cpu"), torch.device("cpu"))


def test_the_cpu_bf16_engine_plans_its_small_convs_and_the_fp32_path_keeps_the_references_convs():
    A, B = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    mixed, exact = engine("bf16"), engine("fp32")
    mixed(A, B)
    exact(A, B)
    assert exact.report()["layer_choices"] is None
    assert not any(isinstance(m, (MatmulConv2d, MatmulConvTranspose2d)) for m in exact.step.G.modules())
    chosen = mixed.report()["layer_choices"]
    assert chosen["G"] and chosen["D"]  # at 32² every layer but the outer ones is over few pixels
    for net, key in ((mixed.step.G, "G"), (mixed.step.D, "D")):
        layers = dict(net.named_modules())
        assert all(isinstance(layers[name], (MatmulConv2d, MatmulConvTranspose2d)) for name in chosen[key])
    losses = mixed.read_losses()
    assert all(torch.isfinite(torch.as_tensor(v)) for v in losses.values())
