"""The fused convolution (kernels/conv_bn_act.py) against torch.nn.functional, under the interpreter on CPU.

Plain conv / ConvTranspose: forward, input, weight and bias gradients over strides, paddings, odd channel counts,
1×1 and 2×2 bottlenecks and batch 1, in fp32 and fp16, with every buffer the kernels write poisoned first.
Fused: small U-Net and PatchGAN chains (BatchNorm statistics in the epilogue, BatchNorm + activation + dropout in
the prologue, the two-source up conv, bias + Tanh) against the eager composition, forward and every gradient.
The reference runs in float64 on the same (rounded) inputs. GPU tests sweep the pix2pix layer shapes in bf16.
"""
import pytest
import torch
import torch.nn.functional as F

from fastpix.kernels import conv_bn_act as cba
from fastpix.kernels.batch_norm_act import dropout_mask
from fastpix.kernels.testing import TOLERANCES, assert_close, full_sweep, poison, relative_error

CPU = torch.device("cpu")


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer allocated with torch.empty/empty_like during the test starts as NaN: outputs, partials and
    workspaces the kernels forget to write show up in the comparisons."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned_empty(*args, **kwargs):
        return poison(empty(*args, **kwargs))

    def poisoned_empty_like(*args, **kwargs):
        return poison(empty_like(*args, **kwargs))

    monkeypatch.setattr(torch, "empty", poisoned_empty)
    monkeypatch.setattr(torch, "empty_like", poisoned_empty_like)


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


def _leaf(t):
    return t.detach().clone().requires_grad_()


def _ref(t):
    return None if t is None else t.detach().double().requires_grad_()


# (transposed, stride, padding, kernel, N, Cin, Cout, H, W, dtype, bias)
PLAIN_CASES = [
    (False, 2, 1, 4, 2, 5, 7, 6, 6, torch.float32, True),     # G down / D s2, odd channels
    (False, 1, 1, 4, 1, 4, 3, 5, 5, torch.float32, False),    # D's stride-1 convs, batch 1
    (False, 2, 1, 4, 1, 8, 8, 2, 2, torch.float16, False),    # 2×2 → 1×1 bottleneck
    (False, 2, 1, 4, 2, 3, 5, 7, 5, torch.float16, True),     # odd sizes
    (False, 1, 0, 1, 2, 6, 8, 3, 4, torch.float32, True),     # 1×1 (PixelGAN)
    (True, 2, 1, 4, 2, 5, 7, 3, 3, torch.float32, True),      # G up
    (True, 2, 1, 4, 1, 8, 4, 1, 1, torch.float16, False),     # 1×1 → 2×2 bottleneck
    (True, 2, 1, 4, 2, 4, 3, 2, 3, torch.float16, True),
    (True, 1, 1, 3, 1, 3, 4, 4, 4, torch.float32, False),     # stride-1 ConvT (any kernel size)
    (False, 2, 1, 4, 1, 19, 17, 4, 4, torch.float32, False),  # several channel blocks
    (True, 2, 1, 4, 1, 17, 19, 2, 2, torch.float16, True),
]


def _plain_case(transposed, stride, padding, kernel, N, Cin, Cout, H, W, dtype, bias):
    x = _leaf(_cl(torch.randn(N, Cin, H, W).to(dtype)))
    shape = (Cin, Cout, kernel, kernel) if transposed else (Cout, Cin, kernel, kernel)
    w = _leaf(torch.randn(shape) * 0.2)
    b = _leaf(torch.randn(Cout)) if bias else None
    return x, w, b


@pytest.mark.parametrize("case", PLAIN_CASES, ids=lambda c: f"{'convT' if c[0] else 'conv'}-s{c[1]}p{c[2]}k{c[3]}-"
                                                          f"n{c[4]}c{c[5]}o{c[6]}-{c[7]}x{c[8]}-{str(c[9])[6:]}")
def test_plain_conv_matches_torch(case, poisoned):
    transposed, stride, padding, kernel, N, Cin, Cout, H, W, dtype, bias = case
    x, w, b = _plain_case(*case)
    y = cba.conv_bn_act(x, w, b, stride, padding, transposed=transposed)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    op = F.conv_transpose2d if transposed else F.conv2d
    xr, wr, br = _ref(x), _ref(w), _ref(b)
    yr = op(xr, wr, br, stride, padding)
    g = torch.randn(yr.shape).to(dtype)
    y.backward(_cl(g))
    yr.backward(g.double())
    assert_close(y, yr, dtype, "output")
    # Gradients sum over pixels (and channels): tolerance scaled by the length of the sums.
    assert_close(x.grad, xr.grad, dtype, "input grad", scale=4)
    assert_close(w.grad, wr.grad, dtype, "weight grad", scale=16)
    if bias:
        assert_close(b.grad, br.grad, dtype, "bias grad", scale=16)


def test_plain_conv_is_deterministic():
    case = (False, 2, 1, 4, 2, 5, 7, 6, 6, torch.float16, True)
    results = []
    for _ in range(2):
        torch.manual_seed(7)
        x, w, b = _plain_case(*case)
        y = cba.conv_bn_act(x, w, b, 2, 1)
        y.backward(torch.ones_like(y))
        results.append([y, x.grad, w.grad, b.grad])
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_two_source_conv_transpose_matches_concat(dtype, poisoned):
    """The U-Net up conv reads skip and up as two sources: equal to ConvT of their concat, gradients included."""
    skip = _leaf(_cl(torch.randn(2, 3, 3, 2).to(dtype)))
    up = _leaf(_cl(torch.randn(2, 5, 3, 2).to(dtype)))
    w = _leaf(torch.randn(8, 4, 4, 4) * 0.2)
    y = cba.conv_bn_act(skip, w, None, 2, 1, transposed=True, x2=up)
    sr, ur, wr = _ref(skip), _ref(up), _ref(w)
    yr = F.conv_transpose2d(torch.cat([sr, ur], 1), wr, None, 2, 1)
    g = torch.randn(yr.shape).to(dtype)
    y.backward(_cl(g))
    yr.backward(g.double())
    assert_close(y, yr, dtype, "output")
    assert_close(skip.grad, sr.grad, dtype, "skip grad", scale=4)
    assert_close(up.grad, ur.grad, dtype, "up grad", scale=4)
    assert_close(w.grad, wr.grad, dtype, "weight grad", scale=16)


def test_bad_shapes_raise_clear_errors():
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"input channels 3 .* do not match the conv weight \[out, in, kh, kw\]"):
        cba.conv_bn_act(x, torch.randn(8, 4, 4, 4), None, 2, 1)
    with pytest.raises(ValueError, match="two sources must share"):
        cba.conv_bn_act(x, torch.randn(5, 8, 4, 4), None, 2, 1, transposed=True, x2=torch.randn(1, 2, 2, 2))
    with pytest.raises(ValueError, match="activation 'gelu'"):
        cba.conv_bn_act(x, torch.randn(8, 3, 4, 4), None, 2, 1, activation="gelu")
