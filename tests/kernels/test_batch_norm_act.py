"""The fused norm + activation + dropout kernels against their eager PyTorch composition.

Reference: F.batch_norm / F.instance_norm, then F.relu / F.leaky_relu, then the dropout mask the kernel drew
(kernels.batch_norm_act.dropout_mask) scaled by 1/(1 − p), evaluated in float64 with autograd on the very values the
kernel saw (a half-precision input is upcast exactly), so the comparison measures the kernel's error alone, with the
(atol, rtol) of its dtype from tests/kernels/harness.py. Every output buffer is poisoned with NaN before the launch.
The quick subset runs by default; FASTPIX_FULL=1 sweeps every shape of the issue (C 3/5/64/512 × H×W 1×1 … 64×64 ×
batch 1/2/5) and the pix2pix layer shapes (those on a GPU).
"""

import itertools

import pytest
import torch
import torch.nn.functional as F
from harness import assert_close, full_sweep, poison

from fastpix.bench_suites.layers import PIX2PIX_NORM_LAYERS, norm_act_inputs
from fastpix.kernels import batch_norm_act as bna
from fastpix.kernels.batch_norm_act import (
    batch_norm_act,
    dropout_mask,
    instance_norm_act,
    norm_act_backward,
    norm_act_forward,
)
from fastpix.models.norm_act import BatchNormAct2d, InstanceNormAct2d

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS, MOMENTUM, SLOPE = 1e-5, 0.1, 0.2

# (norm, activation, dropout p, affine): "batch" = training statistics, "eval" = running statistics.
MODES = [
    ("batch", "leaky_relu", 0.0, True),
    ("batch", "relu", 0.5, True),
    ("batch", "none", 0.0, False),
    ("eval", "leaky_relu", 0.0, True),
    ("eval", "relu", 0.3, True),
    ("instance", "relu", 0.5, False),
    ("instance", "leaky_relu", 0.0, True),
]
ALL_SHAPES = [
    (n, c, h, w)
    for n, c, (h, w) in itertools.product((1, 2, 5), (3, 5, 64, 512), ((1, 1), (2, 2), (3, 7), (30, 30), (64, 64)))
]
QUICK_SHAPES = [(2, 3, 3, 7), (1, 5, 2, 2), (5, 512, 1, 1), (1, 64, 30, 30), (1, 3, 64, 64)]


def valid(norm, shape):
    """Training statistics need more than one value per channel (per sample and channel for instance norm)."""
    n, _, h, w = shape
    per_stat = h * w if norm == "instance" else n * h * w
    return norm == "eval" or per_stat > 1


def cases(shapes, dtypes):
    return [
        pytest.param(
            mode, shape, dtype, id=f"{mode[0]}-{mode[1]}-p{mode[2]}-{'x'.join(map(str, shape))}-{str(dtype)[6:]}"
        )
        for mode, shape, dtype in itertools.product(MODES, shapes, dtypes)
        if valid(mode[0], shape)
    ]


if full_sweep():
    CASES = cases(ALL_SHAPES, (torch.float32, torch.float16))
else:  # each mode on each quick shape in fp32, and on two of them in fp16
    CASES = cases(QUICK_SHAPES, (torch.float32,)) + cases([(2, 3, 3, 7), (1, 3, 64, 64)], (torch.float16,))


def reference(inputs, norm, activation, p, keep):
    """The eager composition in float64: (y, dx, dγ, dβ, running_mean, running_var) for incoming gradient dy."""
    x = inputs["x"].double().requires_grad_()
    w = None if inputs["weight"] is None else inputs["weight"].double().requires_grad_()
    b = None if inputs["bias"] is None else inputs["bias"].double().requires_grad_()
    rm, rv = inputs["running_mean"].double(), inputs["running_var"].double()
    if norm == "instance":
        z = F.instance_norm(x, weight=w, bias=b, eps=EPS)
    else:
        z = F.batch_norm(x, rm, rv, w, b, training=norm == "batch", momentum=MOMENTUM, eps=EPS)
    if activation == "relu":
        z = F.relu(z)
    elif activation == "leaky_relu":
        z = F.leaky_relu(z, SLOPE)
    if p > 0:
        z = z * keep.double() / (1.0 - p)
    z.backward(inputs["dy"].double())
    return z.detach(), x.grad, None if w is None else w.grad, None if b is None else b.grad, rm, rv


def run_kernels(inputs, norm, activation, p, rng):
    """Forward and backward through the launchers, every output poisoned first; the running stats are updated in
    place on copies. Returns (y, dx, dγ, dβ, running_mean, running_var), NCHW-shaped."""
    x, w, b = inputs["x"], inputs["weight"], inputs["bias"]
    rm, rv = inputs["running_mean"].clone(), inputs["running_var"].clone()
    batch_stats = norm != "eval"
    groups = x.shape[0] if norm == "instance" else 1
    n, c, h, wd = x.shape
    y_out = poison(torch.empty(n, h, wd, c, dtype=x.dtype, device=x.device))
    x_nhwc, y, mean, rstd = norm_act_forward(
        x,
        w,
        b,
        None if norm == "instance" else rm,
        None if norm == "instance" else rv,
        batch_stats=batch_stats,
        groups=groups,
        momentum=MOMENTUM,
        eps=EPS,
        activation=activation,
        slope=SLOPE,
        dropout_p=p,
        rng=rng,
        out=y_out,
    )
    grads_out = (
        poison(torch.empty_like(x_nhwc)),
        None if w is None else poison(torch.empty_like(w)),
        None if b is None else poison(torch.empty_like(b)),
    )
    dx, dw, db = norm_act_backward(
        inputs["dy"],
        x_nhwc,
        w,
        b,
        mean,
        rstd,
        batch_stats=batch_stats,
        groups=groups,
        activation=activation,
        slope=SLOPE,
        dropout_p=p,
        rng=rng,
        out=grads_out,
    )
    return y.permute(0, 3, 1, 2), dx.permute(0, 3, 1, 2), dw, db, rm, rv


def sum_scale(shape, norm):
    """dγ and dβ sum n = N·H·W terms: their tolerance grows with √n."""
    n, _, h, w = shape
    return max(1.0, ((n * h * w) ** 0.5) / 4)


def check(mode, shape, dtype, mean=0.0, std=1.0, tol_scale=1.0):
    norm, activation, p, affine = mode
    inputs = norm_act_inputs(*shape, dtype, DEVICE, mean=mean, std=std, affine=affine)
    rng = torch.tensor([1234, 5678], dtype=torch.int64, device=DEVICE)
    keep = dropout_mask(shape, rng, p) if p > 0 else None
    got = run_kernels(inputs, norm, activation, p, rng)
    want = reference(inputs, norm, activation, p, keep)
    scale = sum_scale(shape, norm) * tol_scale
    for name, g, e, s in zip(("y", "dx", "dweight", "dbias"), got, want, (tol_scale, tol_scale, scale, scale)):
        assert (g is None) == (e is None), name
        if g is not None:
            # y and dx are stored in the input dtype; dγ, dβ in the parameters' fp32 but summed from rounded terms.
            assert_close(g, e, dtype, f"{name} {norm}/{activation}/p={p} {shape}", scale=s)
    if norm == "batch":
        assert_close(got[4], want[4], torch.float32, "running_mean")
        assert_close(got[5], want[5], torch.float32, "running_var")
    else:
        assert torch.equal(got[4], inputs["running_mean"]) and torch.equal(got[5], inputs["running_var"])


@pytest.mark.parametrize("mode,shape,dtype", CASES)
def test_matches_eager(mode, shape, dtype):
    check(mode, shape, dtype)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_adversarial_mean(norm):
    """|mean|/std = 100: E[x²] − E[x]² would lose the variance to cancellation (errors ≈1e-2 here); the shifted
    (count, mean, M2) merge keeps it. The tolerance is doubled: an fp32 mean near 100 is itself only known to
    ulp(100)/2 ≈ 3.8e-6 (≈ that error in x̂, for torch's fp32 kernels too), and the merge rounds it twice."""
    check((norm, "leaky_relu", 0.0, True), (2, 5, 30, 30), torch.float32, mean=100.0, std=1.0, tol_scale=2.0)
    check((norm, "leaky_relu", 0.0, True), (2, 5, 30, 30), torch.float32, mean=-300.0, std=3.0, tol_scale=2.0)


def test_programs_that_loop_over_many_tiles(monkeypatch):
    """Few reduction programs, each merging many tiles (as on large GPU shapes): same result within tolerance."""
    monkeypatch.setattr(bna, "REDUCTION_PROGRAMS", 3)
    check(("batch", "relu", 0.5, True), (5, 3, 30, 30), torch.float32, mean=50.0, tol_scale=2.0)
    check(("instance", "leaky_relu", 0.0, True), (2, 64, 12, 12), torch.float32)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_bitwise_deterministic(norm):
    inputs = norm_act_inputs(2, 64, 12, 12, torch.float32, DEVICE)
    rng = torch.tensor([7, 0], dtype=torch.int64, device=DEVICE)
    first = run_kernels(inputs, norm, "leaky_relu", 0.5, rng)
    second = run_kernels(inputs, norm, "leaky_relu", 0.5, rng)
    for a, b in zip(first, second):
        if a is not None:
            assert torch.equal(a, b)


def test_dropout_mask_fresh_per_call_and_regenerated_in_backward():
    x = torch.randn(2, 8, 16, 16, device=DEVICE).contiguous(memory_format=torch.channels_last).requires_grad_()
    rng_state = torch.tensor([99, 1000], dtype=torch.int64, device=DEVICE)
    before = rng_state.clone()
    y1 = batch_norm_act(x, None, None, None, None, True, activation="relu", dropout_p=0.5, rng_state=rng_state)
    assert rng_state.tolist() == [99, 1000 + x.numel()]  # the offset advanced on the device
    keep1 = dropout_mask(x.shape, before, 0.5)
    y2 = batch_norm_act(x, None, None, None, None, True, activation="relu", dropout_p=0.5, rng_state=rng_state)
    keep2 = dropout_mask(x.shape, before + torch.tensor([0, x.numel()], device=DEVICE), 0.5)
    assert not torch.equal(keep1, keep2)
    assert 0.45 < keep1.float().mean().item() < 0.55
    # dropped elements are exactly zero, kept ones are scaled: y1 is the eager composition with keep1
    z = F.relu(F.batch_norm(x.detach(), None, None, training=True, eps=EPS))
    assert_close(y1, z * keep1 * 2.0, torch.float32, "dropout forward")
    assert_close(y2, z * keep2 * 2.0, torch.float32, "dropout forward, second call")
    # backward regenerates each call's own mask: the gradient of y1 + y2 needs both
    dy = torch.randn_like(x)
    (y1 * dy).sum().backward(retain_graph=True)
    xr = x.detach().double().requires_grad_()
    zr = F.relu(F.batch_norm(xr, None, None, training=True, eps=EPS))
    (zr * keep1.double() * 2.0 * dy.double()).sum().backward(retain_graph=True)
    assert_close(x.grad, xr.grad, torch.float32, "dropout dx")
    x.grad = None
    (y2 * dy).sum().backward()
    xr.grad = None
    (zr * keep2.double() * 2.0 * dy.double()).sum().backward()
    assert_close(x.grad, xr.grad, torch.float32, "dropout dx, second call")


def test_batch_norm_act_module_matches_batchnorm2d():
    """BatchNormAct2d: the state_dict, running statistics and num_batches_tracked of nn.BatchNorm2d (also with
    momentum=None, the cumulative average), training then eval, forward and parameter gradients."""
    for momentum in (0.1, None):
        ref = torch.nn.BatchNorm2d(5, momentum=momentum).double()
        fused = BatchNormAct2d(5, momentum=momentum, activation="leaky_relu", slope=SLOPE)
        with torch.no_grad():
            ref.weight.normal_(1, 0.5)
            ref.bias.normal_(0, 0.5)
        fused.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ref.state_dict().items()})
        assert list(fused.state_dict()) == list(ref.state_dict())
        fused.to(DEVICE)
        for step in range(3):
            x = torch.randn(4, 5, 3, 7) * 2 + 1
            y = fused(x.to(DEVICE))
            y_ref = F.leaky_relu(ref(x.double()), SLOPE)
            assert_close(y, y_ref, torch.float32, f"step {step} forward")
            y.sum().backward()
            y_ref.sum().backward()
        for k, v in ref.state_dict().items():
            tol_dtype = torch.float32 if v.is_floating_point() else None
            if tol_dtype is None:
                assert torch.equal(fused.state_dict()[k].cpu(), v), k
            else:
                assert_close(fused.state_dict()[k], v, torch.float32, k)
        assert_close(fused.weight.grad, ref.weight.grad, torch.float32, "dweight", scale=4)
        assert_close(fused.bias.grad, ref.bias.grad, torch.float32, "dbias", scale=4)
        fused.eval()
        ref.eval()
        x = torch.randn(2, 5, 4, 4)
        assert_close(fused(x.to(DEVICE)), F.leaky_relu(ref(x.double()), SLOPE), torch.float32, "eval forward")
        assert int(fused.num_batches_tracked) == 3


def test_instance_norm_act_module_matches_instancenorm2d():
    ref = torch.nn.InstanceNorm2d(5)
    fused = InstanceNormAct2d(5, activation="relu", dropout_p=0.5).to(DEVICE)
    assert list(fused.state_dict()) == list(ref.state_dict()) == []
    x = torch.randn(3, 5, 6, 6)
    fused.eval()  # eval: no dropout, still per-sample statistics (as nn.InstanceNorm2d without running stats)
    assert_close(fused(x.to(DEVICE)), F.relu(ref(x)), torch.float32, "instance norm eval")


def test_channels_last_and_contiguous_inputs_agree():
    x = torch.randn(2, 5, 6, 7, device=DEVICE)
    a = instance_norm_act(x, activation="leaky_relu")
    b = instance_norm_act(x.contiguous(memory_format=torch.channels_last), activation="leaky_relu")
    assert a.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b)


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(1, 4, 1, 1, device=DEVICE)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm_act(x, None, None, None, None, True)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        instance_norm_act(torch.randn(3, 4, 1, 1, device=DEVICE))
    with pytest.raises(ValueError, match="4-d"):
        batch_norm_act(torch.randn(4, 5, device=DEVICE), None, None, None, None, True)
    with pytest.raises(ValueError, match="weight has shape"):
        batch_norm_act(torch.randn(2, 4, 3, 3, device=DEVICE), torch.ones(3, device=DEVICE), None, None, None, True)
    with pytest.raises(ValueError, match="activation 'gelu'"):
        BatchNormAct2d(4, activation="gelu")
    with pytest.raises(ValueError, match="dropout_p"):
        batch_norm_act(torch.randn(2, 4, 3, 3, device=DEVICE), None, None, None, None, True, dropout_p=1.0)
    with pytest.raises(ValueError, match="running_mean and running_var"):
        batch_norm_act(torch.randn(2, 4, 3, 3, device=DEVICE), None, None, None, None, False)


@pytest.mark.gpu
@pytest.mark.parametrize("name,C,H,W,activation,p", PIX2PIX_NORM_LAYERS, ids=[n[0] for n in PIX2PIX_NORM_LAYERS])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_pix2pix_layers_on_gpu(name, C, H, W, activation, p, dtype, norm):
    """Every pix2pix norm layer at 256², batch 16 (and 1 for instance norm's per-sample path), including bf16."""
    for batch in (16,) if norm == "batch" else (1, 16):
        if norm == "batch" or H * W > 1:
            check((norm, activation, p, norm == "batch"), (batch, C, H, W), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("mode,shape", [(m, s) for m, s in itertools.product(MODES, QUICK_SHAPES) if valid(m[0], s)])
def test_bfloat16_on_gpu(mode, shape):
    check(mode, shape, torch.bfloat16)
