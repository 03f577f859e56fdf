"""The fused convolution (kernels/conv_bn_act.py) against torch.nn.functional (under the interpreter on a CPU).

Plain conv / ConvTranspose: forward, input, weight and bias gradients over strides, paddings, odd channel counts,
1×1 and 2×2 bottlenecks and batch 1, in fp32 and fp16, with every buffer the kernels write poisoned first.
Fused: small U-Net and PatchGAN chains (BatchNorm statistics in the epilogue, BatchNorm + activation + dropout in
the prologue, the two-source up conv, bias + Tanh) against the eager composition, forward and every gradient.
The reference runs in float64 on the same (rounded) inputs. GPU tests sweep the pix2pix layer shapes in bf16.
"""

import pytest
import torch
import torch.nn.functional as F
from harness import assert_close, full_sweep, poison, relative_error

from fastpix.bench_suites.layers import (
    PIX2PIX_CONV_LAYERS,
    ConvLayer,
    activated_sources,
    eager_block,
    fused_block,
    fused_block_output,
    layer_inputs,
)
from fastpix.kernels import conv_bn_act as cba
from fastpix.kernels.batch_norm_act import dropout_mask

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def _exact_and_untuned(monkeypatch, tmp_path):
    """fp32 compared exactly (no TF32, in cuDNN or in the kernels), default block sizes (tuning each tiny problem
    would compile every candidate), and any tuning cache kept in tmp_path."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setenv("FASTPIX_CONV_AUTOTUNE", "0")
    monkeypatch.setenv("FASTPIX_TUNING_CACHE", str(tmp_path / "conv_tuning.json"))


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
    """A leaf on DEVICE (drawn on the CPU, so a seed gives the same values on every device)."""
    return t.detach().to(DEVICE).clone().requires_grad_()


def _ref(t):
    return None if t is None else t.detach().double().requires_grad_()


# (transposed, stride, padding, kernel, N, Cin, Cout, H, W, dtype, bias)
PLAIN_CASES = [
    (False, 2, 1, 4, 2, 5, 7, 6, 6, torch.float32, True),  # G down / D s2, odd channels
    (False, 1, 1, 4, 1, 4, 3, 5, 5, torch.float32, False),  # D's stride-1 convs, batch 1
    (False, 2, 1, 4, 1, 8, 8, 2, 2, torch.float16, False),  # 2×2 → 1×1 bottleneck
    (False, 2, 1, 4, 2, 3, 5, 7, 5, torch.float16, True),  # odd sizes
    (False, 1, 0, 1, 2, 6, 8, 3, 4, torch.float32, True),  # 1×1 (PixelGAN)
    (True, 2, 1, 4, 2, 5, 7, 3, 3, torch.float32, True),  # G up
    (True, 2, 1, 4, 1, 8, 4, 1, 1, torch.float16, False),  # 1×1 → 2×2 bottleneck
    (True, 2, 1, 4, 2, 4, 3, 2, 3, torch.float16, True),
    (True, 1, 1, 3, 1, 3, 4, 4, 4, torch.float32, False),  # stride-1 ConvT (any kernel size)
    (False, 2, 1, 4, 1, 37, 35, 4, 4, torch.float32, False),  # several channel blocks
    (True, 2, 1, 4, 1, 35, 37, 2, 2, torch.float16, True),
]


def _plain_case(transposed, stride, padding, kernel, N, Cin, Cout, H, W, dtype, bias):
    x = _leaf(_cl(torch.randn(N, Cin, H, W).to(dtype)))
    shape = (Cin, Cout, kernel, kernel) if transposed else (Cout, Cin, kernel, kernel)
    w = _leaf(torch.randn(shape) * 0.2)
    b = _leaf(torch.randn(Cout)) if bias else None
    return x, w, b


@pytest.mark.parametrize(
    "case",
    PLAIN_CASES,
    ids=lambda c: (
        f"{'convT' if c[0] else 'conv'}-s{c[1]}p{c[2]}k{c[3]}-n{c[4]}c{c[5]}o{c[6]}-{c[7]}x{c[8]}-{str(c[9])[6:]}"
    ),
)
def test_plain_conv_matches_torch(case, poisoned):
    transposed, stride, padding, kernel, N, Cin, Cout, H, W, dtype, bias = case
    x, w, b = _plain_case(*case)
    y = cba.conv_bn_act(x, w, b, stride, padding, transposed=transposed)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    op = F.conv_transpose2d if transposed else F.conv2d
    xr, wr, br = _ref(x), _ref(w), _ref(b)
    yr = op(xr, wr, br, stride, padding)
    g = torch.randn(yr.shape).to(dtype).to(DEVICE)
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
    g = torch.randn(yr.shape).to(dtype).to(DEVICE)
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


# ---------------------------------------------------------------------------------------------------------------
# Fused chains: BatchNorm statistics in the epilogue, BatchNorm + activation (+ dropout) in the prologue
# ---------------------------------------------------------------------------------------------------------------


def _bn_params(c):
    return {
        "weight": _leaf(1 + 0.2 * torch.randn(c)),
        "bias": _leaf(0.2 * torch.randn(c)),
        "running_mean": torch.zeros(c, device=DEVICE),
        "running_var": torch.ones(c, device=DEVICE),
    }


def _make_unet_chain(dtype, instance=False):
    """A two-level U-Net in miniature: x (2, 3, 8, 8) → down 6 → down 8 (2×2) → up 6 → up(skip, up) 3 + Tanh."""
    p = {
        "instance": instance,
        "x": _leaf(_cl(torch.randn(2, 3, 8, 8).to(dtype))),
        "w1": _leaf(0.3 * torch.randn(6, 3, 4, 4)),
        "w2": _leaf(0.3 * torch.randn(8, 6, 4, 4)),
        "w3": _leaf(0.3 * torch.randn(8, 6, 4, 4)),
        "w4": _leaf(0.3 * torch.randn(12, 3, 4, 4)),
        "b4": _leaf(0.1 * torch.randn(3)),
        "rng": torch.tensor([1234, 77], dtype=torch.int64, device=DEVICE),
    }
    for name, c in (("bn1", 6), ("bn2", 8), ("bn3", 6)):
        p[name] = _bn_params(c)
    return p


def _stats(p, bn):
    """conv_bn_act's statistics arguments for norm layer `bn`: batch (with running statistics) or instance."""
    if p["instance"]:
        return dict(stats=True, per_sample=True)
    return dict(stats=True, running_mean=bn["running_mean"], running_var=bn["running_var"])


def _unet_fused(p):
    bn1, bn2, bn3 = p["bn1"], p["bn2"], p["bn3"]
    y1, m1, r1 = cba.conv_bn_act(p["x"], p["w1"], None, 2, 1, **_stats(p, bn1))
    n1 = cba.batch_norm_prologue(m1, r1, bn1["weight"], bn1["bias"])
    y2, m2, r2 = cba.conv_bn_act(y1, p["w2"], None, 2, 1, norm=n1, activation="leaky_relu", **_stats(p, bn2))
    n2 = cba.batch_norm_prologue(m2, r2, bn2["weight"], bn2["bias"])
    y3, m3, r3 = cba.conv_bn_act(y2, p["w3"], None, 2, 1, transposed=True, norm=n2, activation="relu", **_stats(p, bn3))
    n3 = cba.batch_norm_prologue(m3, r3, bn3["weight"], bn3["bias"])
    per_sample = p["instance"]
    return cba.conv_bn_act(
        y1,
        p["w4"],
        p["b4"],
        2,
        1,
        transposed=True,
        norm=n1,
        activation="relu",
        x2=y3,
        norm2=n3,
        activation2="relu",
        dropout_p2=0.5,
        rng2=p["rng"],
        tanh=True,
        per_sample=per_sample,
    )


def _rounding(p):
    """Rounds a float64 tensor to the kernels' storage dtype and back (differentiably): the reference rounds
    where the kernels store (raw conv outputs, activated operands), so a LeakyReLU/ReLU kink or a tiny BatchNorm
    batch cannot turn one ulp of rounding into a different gradient."""
    dtype = p["x"].dtype
    return lambda t: t.to(dtype).double()


def _eager_norm(p, r):
    """The eager norm layer `name` of a chain: training-mode BatchNorm or InstanceNorm (affine), float64."""

    def norm(y, name):
        if p["instance"]:
            return F.instance_norm(y, weight=r[name + ".w"], bias=r[name + ".b"], eps=1e-5)
        return F.batch_norm(y, r[name + ".rm"], r[name + ".rv"], r[name + ".w"], r[name + ".b"], True, 0.1, 1e-5)

    return norm


def _unet_eager(p, r):
    """The same network as eager float64 ops; r holds float64 leaves of p's tensors and running statistics."""
    bn = _eager_norm(p, r)

    q = _rounding(p)
    z1 = bn(q(F.conv2d(r["x"], r["w1"], None, 2, 1)), "bn1")
    y2 = q(F.conv2d(q(F.leaky_relu(z1, 0.2)), r["w2"], None, 2, 1))
    y3 = q(F.conv_transpose2d(q(F.relu(bn(y2, "bn2"))), r["w3"], None, 2, 1))
    keep = dropout_mask(y3.shape, p["rng"], 0.5)
    up = F.relu(bn(y3, "bn3")) * keep * 2.0
    return torch.tanh(F.conv_transpose2d(q(torch.cat([F.relu(z1), up], 1)), r["w4"], r["b4"], 2, 1))


def _make_patchgan_chain(dtype, instance=False):
    """A PatchGAN in miniature: (2, 6, 12, 12) → s2 6 + bias, LReLU → s2 8, BN, LReLU → s1 8, BN, LReLU → s1 1."""
    p = {
        "instance": instance,
        "x": _leaf(_cl(torch.randn(2, 6, 12, 12).to(dtype))),
        "w1": _leaf(0.3 * torch.randn(6, 6, 4, 4)),
        "b1": _leaf(0.1 * torch.randn(6)),
        "w2": _leaf(0.3 * torch.randn(8, 6, 4, 4)),
        "w3": _leaf(0.3 * torch.randn(8, 8, 4, 4)),
        "w4": _leaf(0.3 * torch.randn(1, 8, 4, 4)),
        "b4": _leaf(0.1 * torch.randn(1)),
    }
    for name, c in (("bn2", 8), ("bn3", 8)):
        p[name] = _bn_params(c)
    if instance:  # pix2pix's rule: a conv has a bias under instance norm (its backward sums the fused prologue)
        p["b2"] = _leaf(0.1 * torch.randn(8))
    return p


def _patchgan_fused(p):
    bn2, bn3 = p["bn2"], p["bn3"]
    y1 = cba.conv_bn_act(p["x"], p["w1"], p["b1"], 2, 1)
    y2, m2, r2 = cba.conv_bn_act(y1, p["w2"], p.get("b2"), 2, 1, activation="leaky_relu", **_stats(p, bn2))
    y3, m3, r3 = cba.conv_bn_act(
        y2,
        p["w3"],
        None,
        1,
        1,
        norm=cba.batch_norm_prologue(m2, r2, bn2["weight"], bn2["bias"]),
        activation="leaky_relu",
        **_stats(p, bn3),
    )
    return cba.conv_bn_act(
        y3,
        p["w4"],
        p["b4"],
        1,
        1,
        norm=cba.batch_norm_prologue(m3, r3, bn3["weight"], bn3["bias"]),
        activation="leaky_relu",
        per_sample=p["instance"],
    )


def _patchgan_eager(p, r):
    bn = _eager_norm(p, r)

    q = _rounding(p)
    a1 = q(F.leaky_relu(q(F.conv2d(r["x"], r["w1"], r["b1"], 2, 1)), 0.2))
    a2 = q(F.leaky_relu(bn(q(F.conv2d(a1, r["w2"], r.get("b2"), 2, 1)), "bn2"), 0.2))
    a3 = q(F.leaky_relu(bn(q(F.conv2d(a2, r["w3"], None, 1, 1)), "bn3"), 0.2))
    return F.conv2d(a3, r["w4"], r["b4"], 1, 1)


def _reference_leaves(p):
    r = {}
    for key, v in p.items():
        if isinstance(v, dict):
            r[key + ".w"], r[key + ".b"] = _ref(v["weight"]), _ref(v["bias"])
            r[key + ".rm"], r[key + ".rv"] = v["running_mean"].double().clone(), v["running_var"].double().clone()
        elif isinstance(v, torch.Tensor) and v.is_floating_point():
            r[key] = _ref(v)
    return r


def _compare_chain(make, fused, eager, dtype, instance=False):
    p = make(dtype, instance)
    r = _reference_leaves(p)
    out = fused(p)
    ref = eager(p, r)
    g = torch.randn(ref.shape).to(dtype).to(DEVICE)
    out.backward(_cl(g))
    ref.backward(g.double())
    checks = [("output", out, ref)]
    for key, v in p.items():
        if isinstance(v, dict):
            checks += [
                (key + ".weight grad", v["weight"].grad, r[key + ".w"].grad),
                (key + ".bias grad", v["bias"].grad, r[key + ".b"].grad),
                (key + ".running_mean", v["running_mean"], r[key + ".rm"]),
                (key + ".running_var", v["running_var"], r[key + ".rv"]),
            ]
        elif isinstance(v, torch.Tensor) and v.is_floating_point():
            checks.append((key + " grad", v.grad, r[key].grad))
    return checks


CHAINS = {
    "unet": (_make_unet_chain, _unet_fused, _unet_eager),
    "patchgan": (_make_patchgan_chain, _patchgan_fused, _patchgan_eager),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_fused_chain_matches_eager(chain, dtype, poisoned):
    """Output, every gradient (input, weights, biases, BatchNorm γ and β) and the running statistics."""
    # fp32 lands near 1e-7, fp16 near 2e-3. In fp16 the one-ulp differences of the stored raw outputs can move an
    # element across a ReLU kink (about one draw in four of these tiny BatchNorm batches does, and a gradient then
    # differs by tens of percent in fp16 as it would in eager AMP); the seeded draw (conftest) has none.
    bound = 1e-5 if dtype == torch.float32 else 1e-2
    for name, actual, expected in _compare_chain(*CHAINS[chain], dtype):
        error = relative_error(actual, expected)
        assert error < bound, f"{chain} {name}: relative error {error:.3g} (bound {bound:g})"


def test_fused_chain_is_deterministic():
    runs = []
    for _ in range(2):
        torch.manual_seed(11)
        p = _make_unet_chain(torch.float16)
        out = _unet_fused(p)
        out.backward(torch.ones_like(out))
        runs.append(
            [
                out,
                p["x"].grad,
                p["w1"].grad,
                p["w3"].grad,
                p["bn1"]["weight"].grad,
                p["bn2"]["bias"].grad,
                p["bn3"]["running_var"],
            ]
        )
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------------
# The layer factory shared with the benchmarks and the cuDNN-fallback measurement; the tuning cache
# ---------------------------------------------------------------------------------------------------------------

TINY_LAYERS = [  # the pix2pix layer kinds (bench/suites/layers.py) at interpreter sizes
    ConvLayer("down", False, (5,), 6, 6, 2, ("bn_act",), "leaky_relu", False, "bn", "leaky_relu"),
    ConvLayer("first", False, (3,), 4, 6, 2, ("image",), "none", False, "bias"),
    ConvLayer("up", True, (3, 4), 5, 3, 2, ("act", "bn_act"), "relu", True, "bn", "relu"),
    ConvLayer("last", True, (2, 2), 3, 3, 2, ("bn_act", "bn_act"), "relu", False, "tanh"),
    ConvLayer("d4", False, (4,), 3, 5, 1, ("bn_act",), "leaky_relu", False, "bias", width=6),
    ConvLayer("up-instance", True, (3, 4), 5, 3, 2, ("act", "bn_act"), "relu", True, "bn", "relu", norm="instance"),
]


@pytest.mark.parametrize("layer", TINY_LAYERS, ids=lambda layer: layer.name)
def test_layer_factory_fused_block_equals_eager_block(layer):
    """What the benchmarks time as 'triton' and 'cudnn' computes the same block (fp32)."""
    case = layer_inputs(layer, 2, torch.float32, DEVICE, seed=3)
    fused = fused_block_output(layer, case, fused_block(layer, case))
    eager = eager_block(layer, case, activated_sources(layer, case))
    assert fused.shape == eager.shape == (2, layer.out_channels, *layer.out_hw)
    assert relative_error(fused, eager) < 1e-5


def test_pix2pix_layer_table_has_the_networks_flops():
    """G 12.10 GFLOP and D 6.39 GFLOP per 256² image: the layer table is unet_256 and the basic PatchGAN, as
    fastpix.train.flops counts them on the modules (tests/test_engine.py)."""
    g = sum(layer.flops(1) for layer in PIX2PIX_CONV_LAYERS if layer.name.startswith("G."))
    d = sum(layer.flops(1) for layer in PIX2PIX_CONV_LAYERS if layer.name.startswith("D."))
    assert round(g / 1e9, 2) == 12.10 and round(d / 1e9, 2) == 6.39


def test_machine_timings_round_trip(tmp_path):
    from fastpix.models.tuning import MachineTimings

    path = tmp_path / "sub" / "tuning.json"
    cache = MachineTimings(str(path))
    assert cache.get("conv_gemm", "k") is None
    cache.put("conv_gemm", "k", [64, 64, 32, 4, 3])
    cache.put("layer", "l", {"choice": "cudnn"})
    again = MachineTimings(str(path))
    assert again.get("conv_gemm", "k") == [64, 64, 32, 4, 3] and again.get("layer", "l") == {"choice": "cudnn"}
    assert [p.name for p in path.parent.iterdir()] == ["tuning.json"]  # written atomically: no temporary left
    path.write_text("{not json")
    assert MachineTimings(str(path)).get("layer", "l") is None  # a damaged cache is measured again, not fatal


# ---------------------------------------------------------------------------------------------------------------
# GPU: every pix2pix layer at full size in bf16, autotuning and the per-layer choice
# ---------------------------------------------------------------------------------------------------------------


def _block_leaves(case):
    leaves = [t for t in case["sources"] if t.requires_grad]
    leaves += [t for norm in case["norms"] if norm is not None for t in norm if t.requires_grad]
    leaves += [case["weight"], case["bn_weight"], case["bn_bias"]] + (
        [case["bias"]] if case["bias"] is not None else []
    )
    return leaves


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("layer", PIX2PIX_CONV_LAYERS, ids=[layer.name for layer in PIX2PIX_CONV_LAYERS])
def test_pix2pix_layer_matches_eager(layer, dtype):
    """The fused block against eager cuDNN conv + BatchNorm + activation on the same bf16 / fp16 inputs: output and
    the gradients of the raw sources, the producers' (k, β), the weight, the bias and this layer's (γ, β); at batch
    1, 16 and 64 in the full sweep (`make gpu-check` runs it)."""
    for batch in (1, 16, 64) if full_sweep() else (1,):
        case = layer_inputs(layer, batch, dtype, DEVICE, seed=0)
        fused = fused_block_output(layer, case, fused_block(layer, case))
        eager = eager_block(layer, case, activated_sources(layer, case, detach=False))
        assert relative_error(fused, eager) < 1e-2, f"{layer.name} batch {batch} output"
        g = torch.randn(eager.shape, device=DEVICE).to(eager.dtype)
        leaves = _block_leaves(case)
        grads_f = torch.autograd.grad(fused, leaves, g.to(fused.dtype), allow_unused=True)
        grads_e = torch.autograd.grad(eager, leaves, g, allow_unused=True)
        for i, (a, e) in enumerate(zip(grads_f, grads_e)):
            if e is None:  # this layer's (γ, β) where it has no BatchNorm
                assert a is None, f"{layer.name} leaf {i}"
                continue
            error = relative_error(a.float(), e.float())
            assert error < 2e-2, f"{layer.name} batch {batch} grad of leaf {i}: relative error {error:.3g}"


@pytest.mark.gpu
def test_block_sizes_are_measured_in_the_tuning_step_only_and_cached(monkeypatch, tmp_path):
    """A model's ConvTuning (as define_G gives one) measures its kernels' block sizes inside measuring() only and
    caches them in the machine's timings file; the tuned configs compute the same as eager. (The per-layer choice
    is tested on whole networks: tests/kernels/test_conv_models.py.)"""
    import json

    from fastpix.models.tuning import conv_tuning, device_section

    monkeypatch.setenv("FASTPIX_CONV_AUTOTUNE", "1")
    layer = next(layer for layer in PIX2PIX_CONV_LAYERS if layer.name == "G.down5")
    case = layer_inputs(layer, 2, torch.bfloat16, DEVICE, seed=0)
    tuning = conv_tuning()
    fused_block(layer, case, tuning)  # outside the tuning step: the first candidates, nothing measured
    assert not (tmp_path / "conv_tuning.json").exists()
    with tuning.measuring():
        fused = fused_block_output(layer, case, fused_block(layer, case, tuning))
    eager = eager_block(layer, case, activated_sources(layer, case))
    assert relative_error(fused, eager) < 1e-2  # the tuned config computes the same
    with open(tmp_path / "conv_tuning.json") as f:
        measured = json.load(f)[device_section()]["conv_gemm"]
    assert measured
    with tuning.measuring():
        fused_block(layer, case, tuning)
    with open(tmp_path / "conv_tuning.json") as f:
        assert json.load(f)[device_section()]["conv_gemm"] == measured  # cached: nothing measured again


@pytest.fixture
def split_k(monkeypatch):
    """Every conv GEMM splits its taps 3 ways (on a GPU only the few-tile bottleneck layers do)."""
    monkeypatch.setattr(cba, "_split_k_count", lambda programs, taps: min(3, taps))


@pytest.mark.parametrize(
    "case", [PLAIN_CASES[0], PLAIN_CASES[1], PLAIN_CASES[6]], ids=["conv-s2", "conv-s1", "convT-1x1"]
)
def test_split_k_matches_torch(case, split_k, poisoned):
    test_plain_conv_matches_torch(case, None)


def test_split_k_fused_chain_matches_eager(split_k, poisoned):
    """Statistics and dgrad epilogues after the split-K second stage (two sources, dropout, Tanh included)."""
    for name, actual, expected in _compare_chain(*CHAINS["unet"], torch.float32):
        error = relative_error(actual, expected)
        assert error < 1e-5, f"unet {name}: relative error {error:.3g}"


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_fused_chain_with_instance_norm_matches_eager(chain, poisoned):
    """Per-sample statistics (instance norm, with affine here to cover it) in the epilogue, per-sample (mean, k, β)
    in the prologues and the dgrad/wgrad/bias-grad backward, against F.instance_norm."""
    for name, actual, expected in _compare_chain(*CHAINS[chain], torch.float32, instance=True):
        if name == "b2 grad":  # a bias right before a norm has a zero gradient: only rounding is left of it
            assert expected.abs().max() < 1e-6 and actual.abs().max() < 1e-6, (actual, expected)
            continue
        error = relative_error(actual, expected)
        assert error < 1e-5, f"{chain} {name}: relative error {error:.3g}"
