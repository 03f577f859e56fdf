"""The pix2pix convolution layers (unet_256 ngf 64 + basic PatchGAN ndf 64 at 256²) as standalone blocks, each in
its fused form and its eager twin, built from one factory: the GPU tests, bench/bench_kernels.py and the per-layer
cuDNN fallback (conv_tuning.py) all time or check exactly the same thing.

A block is one conv with what the fused design attaches to it (architecture.md, "The fused design"):
  fused: conv_bn_act on the producer's raw output, applying its BatchNorm + activation (+ dropout) on load, with
         this layer's BatchNorm statistics (or bias + Tanh) in the epilogue;
  eager: the same conv (cuDNN) on the materialised activated input (two sources: torch.cat first, as the U-Net
         does), then this layer's BatchNorm (training) and activation — what eager PyTorch runs per layer.
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
        """2·Cin·Cout·k²·(output pixels; input pixels for a ConvT), performance.md's count."""
        h, w = self.in_hw if self.transposed else self.out_hw
        return 2 * self.in_channels * self.out_channels * self.kernel ** 2 * h * w * batch

    def key(self, batch, dtype):
        """This layer's identity for the cached cuDNN-fallback choice (conv_tuning.layer_choice)."""
        h, w = self.in_hw
        return (f"{'convT' if self.transposed else 'conv'} k{self.kernel}s{self.stride}p{self.padding} "
                f"{batch}x{'+'.join(map(str, self.sources))}x{h}x{w} -> {self.out_channels} {str(dtype)[6:]} "
                f"reads={','.join(self.reads)} act={self.activation} dropout={int(self.dropout)} out={self.out}"
                f"{' instance' if self.norm == 'instance' else ''}")


def _pix2pix_layers():
    layers = [ConvLayer("G.down1", False, (3,), 64, 256, 2, ("image",), "none", False, "raw"),
              ConvLayer("G.down2", False, (64,), 128, 128, 2, ("act",), "leaky_relu", False, "bn", "leaky_relu")]
    channels = [128, 256, 512, 512, 512, 512]
    size = 64
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:] + [512])):
        layers.append(ConvLayer(f"G.down{i + 3}", False, (c_in,), c_out, size, 2, ("bn_act",), "leaky_relu", False,
                                "bn", "leaky_relu"))
        size //= 2
    layers.append(ConvLayer("G.down8", False, (512,), 512, 2, 2, ("bn_act",), "leaky_relu", False, "raw"))
    layers.append(ConvLayer("G.up8", True, (512,), 512, 1, 2, ("act",), "relu", False, "bn", "relu"))
    # (level, skip channels, up channels, out channels, input side, the up source carries dropout)
    for level, skip, up, out, side, dropout in ((7, 512, 512, 512, 2, False), (6, 512, 512, 512, 4, True),
                                               (5, 512, 512, 512, 8, True), (4, 512, 512, 256, 16, True),
                                               (3, 256, 256, 128, 32, False), (2, 128, 128, 64, 64, False)):
        layers.append(ConvLayer(f"G.up{level}", True, (skip, up), out, side, 2, ("bn_act", "bn_act"), "relu",
                                dropout, "bn", "relu"))
    layers.append(ConvLayer("G.up1", True, (64, 64), 3, 128, 2, ("act", "bn_act"), "relu", False, "tanh"))
    layers += [ConvLayer("D.conv1", False, (6,), 64, 256, 2, ("image",), "none", False, "bias"),
               ConvLayer("D.conv2", False, (64,), 128, 128, 2, ("act",), "leaky_relu", False, "bn", "leaky_relu"),
               ConvLayer("D.conv3", False, (128,), 256, 64, 2, ("bn_act",), "leaky_relu", False, "bn", "leaky_relu"),
               ConvLayer("D.conv4", False, (256,), 512, 32, 1, ("bn_act",), "leaky_relu", False, "bn", "leaky_relu"),
               ConvLayer("D.conv5", False, (512,), 1, 31, 1, ("bn_act",), "leaky_relu", False, "bias")]
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
    sources = [rand(N, c, *layer.in_hw).to(dtype).contiguous(memory_format=torch.channels_last)
               .requires_grad_(requires_grad and read != "image") for c, read in zip(layer.sources, layer.reads)]
    norms = [(rand(c, scale=0.5), leaf(rand(c, scale=0.2, shift=1.0).abs()), leaf(rand(c, scale=0.2)))
             if read == "bn_act" else None for c, read in zip(layer.sources, layer.reads)]
    k = layer.kernel
    shape = (layer.in_channels, layer.out_channels, k, k) if layer.transposed else \
        (layer.out_channels, layer.in_channels, k, k)
    fan_in = layer.in_channels * k * k
    case = {"sources": sources, "norms": norms, "weight": leaf(rand(*shape, scale=fan_in ** -0.5)),
            "bias": leaf(rand(layer.out_channels, scale=0.1)) if layer.out in ("bias", "tanh") else None,
            "bn_weight": leaf(rand(layer.out_channels, scale=0.2, shift=1.0)),
            "bn_bias": leaf(rand(layer.out_channels, scale=0.2)),
            "rng": torch.tensor([1234, 0], dtype=torch.int64, device=device)}
    return case


def fused_block(layer: ConvLayer, case):
    """The fused block: returns (y, mean, rstd) with BatchNorm statistics, else the conv's output."""
    sources, norms = case["sources"], case["norms"]
    second = len(sources) > 1
    return conv_bn_act(
        sources[0], case["weight"], case["bias"], layer.stride, layer.padding, transposed=layer.transposed,
        norm=norms[0], activation=layer.activation, x2=sources[1] if second else None,
        norm2=norms[1] if second else None,
        activation2=layer.activation, dropout_p2=0.5 if layer.dropout else 0.0,
        rng2=case["rng"] if layer.dropout else None, stats=layer.out == "bn", tanh=layer.out == "tanh",
        per_sample=layer.norm == "instance")


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


def block_step(layer: ConvLayer, N, dtype, device, impl, backward=True, seed=0):
    """A zero-argument callable running one block ('triton': fused, 'cudnn': eager) forward (+ backward with fixed
    random gradients for every output) on fresh random inputs of the layer's shapes: what benchmarks and the
    cuDNN-fallback measurement time."""
    case = layer_inputs(layer, N, dtype, device, seed=seed, requires_grad=backward)
    inputs = activated_sources(layer, case) if impl == "cudnn" else None

    def run():
        return _outputs(fused_block(layer, case) if impl == "triton" else eager_block(layer, case, inputs))

    if not backward:
        return run
    grads = [torch.randn_like(o) for o in run()]

    def step():
        torch.autograd.backward(run(), grads)

    return step


def time_block(layer: ConvLayer, N, dtype, device, impl) -> float:
    """Median seconds of one block's forward + backward (block_step), measured with autograd on and autocast off
    whatever the caller's context (the per-layer choice is made in tune_layers, maybe under no_grad or autocast)."""
    from fastpix.kernels.conv_tuning import median_seconds

    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(torch.device(device).type, enabled=False):
        return median_seconds(block_step(layer, N, dtype, device, impl))


def layer_table(batches=(1, 16, 64), dtype=torch.bfloat16) -> str:
    """What backend='triton' runs for each pix2pix layer on this GPU: the fused block's and eager cuDNN's forward +
    backward median time and the choice (the faster), measuring the layers not in the tuning cache yet."""
    from fastpix.kernels.conv_tuning import cached_layer_timings, layer_choice, tuning

    if not torch.cuda.is_available():
        raise RuntimeError("the per-layer choice is measured on a CUDA device; on a CPU backend='triton' always "
                           "runs the Triton kernels (through the interpreter)")
    lines = [f"{'layer':<9} {'batch':>5}  {'input':<22} {'triton ms':>10} {'cuDNN ms':>10} {'speed-up':>9}  choice"]
    for layer in PIX2PIX_CONV_LAYERS:
        for batch in batches:
            key = layer.key(batch, dtype)
            with tuning():
                choice = layer_choice(key, lambda: time_block(layer, batch, dtype, "cuda", "triton"),
                                      lambda: time_block(layer, batch, dtype, "cuda", "cudnn"))
            timings = cached_layer_timings(key) or {}
            t_fused, t_eager = timings.get("triton_ms"), timings.get("cudnn_ms")
            shape = f"{'+'.join(map(str, layer.sources))}x{layer.size}x{layer.in_hw[1]}"
            times = (f"{t_fused:>10.3f} {t_eager:>10.3f} {t_eager / t_fused:>8.2f}x" if t_fused and t_eager
                     else f"{'-':>10} {'-':>10} {'-':>9}")
            lines.append(f"{layer.name:<9} {batch:>5}  {shape:<22} {times}  {choice}")
    return "\n".join(lines)
