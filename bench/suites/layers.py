"""The pix2pix layers the benchmarks time and the kernel tests check, with their input factories: a benchmark
times exactly what a test checked (tests/kernels import them from here).

- The convolution layers (unet_256 ngf 64 + basic PatchGAN ndf 64 at 256²) as standalone blocks, each in its fused
  form and its eager twin, built from one factory (bench_kernels.py, `make gpu-check`'s conv_blocks stage and
  tests/kernels/test_conv_bn_act.py). A block is one conv with what the fused design attaches to it (docs/design.md,
  "The kernels' fusion"):
    fused: conv_bn_act on the producer's raw output, applying its BatchNorm + activation (+ dropout) on load, with
           this layer's BatchNorm statistics (or bias + Tanh) in the epilogue;
    eager: the same conv (cuDNN) on the materialised activated input (two sources: torch.cat first, as the U-Net
           does), then this layer's BatchNorm (training) and activation — what eager PyTorch runs per layer.
- The norm layers' shapes and the norm + activation, PatchGAN-logits and L1 inputs (`norm_act_inputs`,
  `logits_input`, `l1_inputs`).

The production forward measures its own layers for the per-layer choice (fastpix/models/conv_layer.py); nothing
of fastpix imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastpix.kernels.conv_bn_act import batch_norm_prologue, conv_bn_act


@dataclass(frozen=True)
class ConvLayer:
    """One pix2pix conv. sources: input channels per source (two for the U-Net up convs: skip, up). size: input
    side. reads: how each source is read ('image': as is; 'act': the producer's raw output + activation, no norm;
    'bn_act': + its BatchNorm). activation: the consumer's activation on the input. dropout: the up source carries
    dropout 0.5. out: 'bn' (this layer's BatchNorm statistics, then `out_activation`), 'raw', 'bias' (bias, raw)
    or 'tanh' (bias + Tanh)."""

    name: str
    transposed: bool
    sources: tuple
    out_channels: int
    size: int
    stride: int
    reads: tuple
    activation: str
    dropout: bool
    out: str
    out_activation: str = "none"
    width: int = 0  # 0: square (width = size)
    kernel: int = 4
    padding: int = 1
    norm: str = "batch"  # the norms' kind: 'batch' or 'instance' (per-sample statistics)

    @property
    def in_channels(self):
        return sum(self.sources)

    @property
    def in_hw(self):
        return self.size, self.width or self.size

    @property
    def out_hw(self):
        if self.transposed:
            return tuple((s - 1) * self.stride - 2 * self.padding + self.kernel for s in self.in_hw)
        return tuple((s + 2 * self.padding - self.kernel) // self.stride + 1 for s in self.in_hw)

    def flops(self, batch):
        """2·Cin·Cout·k²·(output pixels; input pixels for a ConvT), the count of fastpix.train.flops."""
        h, w = self.in_hw if self.transposed else self.out_hw
        return 2 * self.in_channels * self.out_channels * self.kernel**2 * h * w * batch


def _pix2pix_layers():
    layers = [
        ConvLayer("G.down1", False, (3,), 64, 256, 2, ("image",), "none", False, "raw"),
        ConvLayer("G.down2", False, (64,), 128, 128, 2, ("act",), "leaky_relu", False, "bn", "leaky_relu"),
    ]
    channels = [128, 256, 512, 512, 512, 512]
    size = 64
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:] + [512])):
        layers.append(
            ConvLayer(
                f"G.down{i + 3}", False, (c_in,), c_out, size, 2, ("bn_act",), "leaky_relu", False, "bn", "leaky_relu"
            )
        )
        size //= 2
    layers.append(ConvLayer("G.down8", False, (512,), 512, 2, 2, ("bn_act",), "leaky_relu", False, "raw"))
    layers.append(ConvLayer("G.up8", True, (512,), 512, 1, 2, ("act",), "relu", False, "bn", "relu"))
    # (level, skip channels, up channels, out channels, input side, the up source carries dropout)
    for level, skip, up, out, side, dropout in (
        (7, 512, 512, 512, 2, False),
        (6, 512, 512, 512, 4, True),
        (5, 512, 512, 512, 8, True),
        (4, 512, 512, 256, 16, True),
        (3, 256, 256, 128, 32, False),
        (2, 128, 128, 64, 64, False),
    ):
        layers.append(
            ConvLayer(
                f"G.up{level}", True, (skip, up), out, side, 2, ("bn_act", "bn_act"), "relu", dropout, "bn", "relu"
            )
        )
    layers.append(ConvLayer("G.up1", True, (64, 64), 3, 128, 2, ("act", "bn_act"), "relu", False, "tanh"))
    layers += [
        ConvLayer("D.conv1", False, (6,), 64, 256, 2, ("image",), "none", False, "bias"),
        ConvLayer("D.conv2", False, (64,), 128, 128, 2, ("act",), "leaky_relu", False, "bn", "leaky_relu"),
        ConvLayer("D.conv3", False, (128,), 256, 64, 2, ("bn_act",), "leaky_relu", False, "bn", "leaky_relu"),
        ConvLayer("D.conv4", False, (256,), 512, 32, 1, ("bn_act",), "leaky_relu", False, "bn", "leaky_relu"),
        ConvLayer("D.conv5", False, (512,), 1, 31, 1, ("bn_act",), "leaky_relu", False, "bias"),
    ]
    return tuple(layers)


PIX2PIX_CONV_LAYERS = _pix2pix_layers()


def _generator(seed):
    return None if seed is None else torch.Generator().manual_seed(seed)


def layer_inputs(layer: ConvLayer, N, dtype, device, seed=None, requires_grad=True):
    """Random inputs of one block, shared by both forms: raw sources (channels_last, `dtype`), the producers'
    (mean, k, β) per source, the weight and bias (fp32, as under autocast), this layer's BatchNorm (γ, β)."""
    g = _generator(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(shape, generator=g) * scale + shift).to(device)

    def leaf(t):
        return t.requires_grad_(requires_grad)

    # An image input (G's and D's first conv) needs no gradient: the model never asks for it.
    sources = [
        rand(N, c, *layer.in_hw)
        .to(dtype)
        .contiguous(memory_format=torch.channels_last)
        .requires_grad_(requires_grad and read != "image")
        for c, read in zip(layer.sources, layer.reads)
    ]
    norms = [
        (rand(c, scale=0.5), leaf(rand(c, scale=0.2, shift=1.0).abs()), leaf(rand(c, scale=0.2)))
        if read == "bn_act"
        else None
        for c, read in zip(layer.sources, layer.reads)
    ]
    k = layer.kernel
    shape = (
        (layer.in_channels, layer.out_channels, k, k)
        if layer.transposed
        else (layer.out_channels, layer.in_channels, k, k)
    )
    fan_in = layer.in_channels * k * k
    case = {
        "sources": sources,
        "norms": norms,
        "weight": leaf(rand(*shape, scale=fan_in**-0.5)),
        "bias": leaf(rand(layer.out_channels, scale=0.1)) if layer.out in ("bias", "tanh") else None,
        "bn_weight": leaf(rand(layer.out_channels, scale=0.2, shift=1.0)),
        "bn_bias": leaf(rand(layer.out_channels, scale=0.2)),
        "rng": torch.tensor([1234, 0], dtype=torch.int64, device=device),
    }
    return case


def fused_block(layer: ConvLayer, case, tuning=None):
    """The fused block: returns (y, mean, rstd) with BatchNorm statistics, else the conv's output. tuning: the
    ConvTuning whose block sizes the kernels take (None: the first candidates)."""
    sources, norms = case["sources"], case["norms"]
    second = len(sources) > 1
    return conv_bn_act(
        sources[0],
        case["weight"],
        case["bias"],
        layer.stride,
        layer.padding,
        transposed=layer.transposed,
        norm=norms[0],
        activation=layer.activation,
        x2=sources[1] if second else None,
        norm2=norms[1] if second else None,
        activation2=layer.activation,
        dropout_p2=0.5 if layer.dropout else 0.0,
        rng2=case["rng"] if layer.dropout else None,
        stats=layer.out == "bn",
        tanh=layer.out == "tanh",
        per_sample=layer.norm == "instance",
        tuning=tuning,
    )


def fused_block_output(layer: ConvLayer, case, out):
    """What the fused block's consumer sees, materialised in torch (for checks): act(BN(y)) or the output."""
    if layer.out != "bn":
        return out
    y, mean, rstd = out
    m, k, b = batch_norm_prologue(mean, rstd, case["bn_weight"], case["bn_bias"])
    z = (y.float() - m[..., None, None]) * k[..., None, None] + b[..., None, None]
    return F.relu(z) if layer.out_activation == "relu" else F.leaky_relu(z, 0.2)


def activated_sources(layer: ConvLayer, case, detach=True):
    """The eager block's input: each source after its producer's BatchNorm, activation and dropout (computed in
    the producer's block in eager PyTorch, so outside the eager block's own work: detached leaves, unless
    `detach` is False — tests then compare the gradients of the raw sources and the producers' (k, β))."""
    from fastpix.kernels.batch_norm_act import dropout_mask

    out = []
    for i, (x, norm) in enumerate(zip(case["sources"], case["norms"])):
        z = x
        if norm is not None:
            mean, k, beta = norm
            z = ((x.float() - mean[:, None, None]) * k[:, None, None] + beta[:, None, None]).to(x.dtype)
        if layer.activation == "relu":
            z = F.relu(z)
        elif layer.activation == "leaky_relu":
            z = F.leaky_relu(z, 0.2)
        if i == 1 and layer.dropout:
            z = z * dropout_mask(z.shape, case["rng"], 0.5).to(z.dtype) * 2.0
        out.append(z.detach().requires_grad_(x.requires_grad) if detach else z)
    return out


def eager_block(layer: ConvLayer, case, inputs):
    """The eager twin on `inputs` (from activated_sources): cuDNN conv, then BatchNorm (training) + activation."""
    x = torch.cat(inputs, 1) if len(inputs) > 1 else inputs[0]
    weight = case["weight"].to(x.dtype)
    bias = None if case["bias"] is None else case["bias"].to(x.dtype)
    conv = F.conv_transpose2d if layer.transposed else F.conv2d
    y = conv(x, weight, bias, layer.stride, layer.padding)
    if layer.out == "tanh":
        return torch.tanh(y)
    if layer.out != "bn":
        return y
    if layer.norm == "instance":
        z = F.instance_norm(y, weight=case["bn_weight"], bias=case["bn_bias"], eps=1e-5)
    else:
        z = F.batch_norm(y, None, None, case["bn_weight"], case["bn_bias"], True, 0.1, 1e-5)
    return F.relu(z) if layer.out_activation == "relu" else F.leaky_relu(z, 0.2)


def _outputs(out):
    return list(out) if isinstance(out, tuple) else [out]


def block_step(layer: ConvLayer, N, dtype, device, impl, backward=True, seed=0, tuning=None):
    """A zero-argument callable running one block ('triton': fused, 'cudnn': eager) forward (+ backward with fixed
    random gradients for every output) on fresh random inputs of the layer's shapes: what the benchmarks time.
    tuning: see fused_block."""
    case = layer_inputs(layer, N, dtype, device, seed=seed, requires_grad=backward)
    inputs = activated_sources(layer, case) if impl == "cudnn" else None

    def run():
        return _outputs(fused_block(layer, case, tuning) if impl == "triton" else eager_block(layer, case, inputs))

    if not backward:
        return run
    grads = [torch.randn_like(o) for o in run()]

    def step():
        torch.autograd.backward(run(), grads)

    return step


# Every norm layer of pix2pix at 256² (unet_256 G, basic PatchGAN D, ngf = ndf = 64) for one image: (name, C, H, W,
# the activation its fused kernel applies, its dropout probability). The U-Net's down norms carry the LeakyReLU of
# the next level, its up norms the ReLU that the parent applies after the skip concat (fastpix/models/fused.py).
PIX2PIX_NORM_LAYERS = (
    ("G.down2", 128, 64, 64, "leaky_relu", 0.0),
    ("G.down3", 256, 32, 32, "leaky_relu", 0.0),
    ("G.down4", 512, 16, 16, "leaky_relu", 0.0),
    ("G.down5", 512, 8, 8, "leaky_relu", 0.0),
    ("G.down6", 512, 4, 4, "leaky_relu", 0.0),
    ("G.down7", 512, 2, 2, "leaky_relu", 0.0),
    ("G.up8", 512, 2, 2, "relu", 0.0),
    ("G.up7", 512, 4, 4, "relu", 0.5),
    ("G.up6", 512, 8, 8, "relu", 0.5),
    ("G.up5", 512, 16, 16, "relu", 0.5),
    ("G.up4", 256, 32, 32, "relu", 0.0),
    ("G.up3", 128, 64, 64, "relu", 0.0),
    ("G.up2", 64, 128, 128, "relu", 0.0),
    ("D.norm1", 128, 64, 64, "leaky_relu", 0.0),
    ("D.norm2", 256, 32, 32, "leaky_relu", 0.0),
    ("D.norm3", 512, 31, 31, "leaky_relu", 0.0),
)
PIX2PIX_LOGITS = (1, 30, 30)  # PatchGAN logits per image (C, H, W)
PIX2PIX_IMAGE = (3, 256, 256)  # G's output and the target per image


def norm_act_inputs(N, C, H, W, dtype, device="cpu", *, mean=0.0, std=1.0, affine=True, seed=None):
    """Random inputs of a norm + activation layer: x (channels_last, N(mean, std²)), weight ≈ N(1, 0.5²),
    bias ≈ N(0, 0.5²) (off their (1, 0) initial values so that they matter; None when not affine), running_mean,
    running_var (fp32, not the trivial (0, 1)) and dy, the incoming gradient (channels_last). Drawn on the CPU
    from torch's generator (or one seeded `seed`), then moved: the same seed gives the same inputs on any device."""
    g = _generator(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    x = (randn(N, C, H, W) * std + mean).to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    dy = randn(N, C, H, W).to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = (1.0 + 0.5 * randn(C)).to(device) if affine else None
    bias = (0.5 * randn(C)).to(device) if affine else None
    running_mean = (0.1 * randn(C)).to(device)
    running_var = (1.0 + torch.rand(C, generator=g)).to(device)
    return {"x": x, "weight": weight, "bias": bias, "running_mean": running_mean, "running_var": running_var, "dy": dy}


def logits_input(N, dtype, device="cpu", shape=PIX2PIX_LOGITS, scale=3.0, seed=None):
    """PatchGAN logits [N, *shape] ≈ N(0, scale²): both signs, some confident (|x| ≫ 1)."""
    return (torch.randn(N, *shape, generator=_generator(seed)) * scale).to(device=device, dtype=dtype)


def l1_inputs(N, dtype, device="cpu", shape=PIX2PIX_IMAGE, seed=None):
    """G's output (tanh range, channels_last as the triton backend produces it) and a target image in [−1, 1]
    (contiguous, as the data pipeline delivers it), both [N, *shape]; some elements are exactly equal (sign 0)."""
    g = _generator(seed)
    fake = torch.tanh(torch.randn(N, *shape, generator=g) * 2)
    real = torch.rand(N, *shape, generator=g) * 2 - 1
    equal = torch.rand(N, *shape, generator=g) < 0.05
    real = torch.where(equal, fake, real)
    fake = fake.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    return fake, real.to(device=device, dtype=dtype)
