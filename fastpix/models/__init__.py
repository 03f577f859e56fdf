"""Model factories with the reference's signatures: define_G, define_D.

The returned modules' state_dict keys and shapes equal the reference's, so checkpoints move both ways, and between
the backends: 'eager' (plain PyTorch modules) and 'triton' (the same tree with each norm + activation pair run by a
fused Triton kernel, fastpix/models/fused.py, and for the U-Net and PatchGAN every conv too, fused_convs.py).
The backend is decided here, once: the built network records it (`net.backend`) and its forward is fixed
(`net.forward_path`, fastpix/models/network.py); under 'triton' a U-Net or PatchGAN gets its fused conv forward with
the ConvTuning that holds its per-layer choices (`net.fused_forward.tuning`), which `tune_layers(net,
example_input)` makes (Triton or cuDNN) before the first iteration.
"""

from fastpix.config import MODEL_BACKENDS as BACKENDS
from fastpix.models.fused_convs import set_forward_path
from fastpix.models.init import init_weights
from fastpix.models.norm import get_norm_layer
from fastpix.models.patchgan import NLayerDiscriminator, PixelDiscriminator
from fastpix.models.resnet import ResnetGenerator
from fastpix.models.tuning import tune_layers
from fastpix.models.unet import UnetGenerator
from fastpix.runtime import use_triton_interpreter


def resolve_backend(backend=None) -> str:
    """None means eager, on CUDA too: triton stays opt-in until it has run on a GPU. Training, the Predictor's norm
    modes and seeded dropout agree with eager on it, but only through Triton's CPU interpreter (tests/kernels/):
    compiled kernels at full size, bf16 numerics and speed against cuDNN are unchecked (the gpu-marked tests and
    bench/suites/bench_kernels.py are written to check them). Before flipping this line, `fastpix export` (which
    loads with the default backend) must ask for eager: ONNX can only trace eager modules."""
    if backend is None:
        return "eager"
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    return backend


def unet_num_downs(netG: str):
    """unet_<size> has log2(size) downsamplings; None for other generators."""
    if not netG.startswith("unet_"):
        return None
    size = int(netG[5:])
    if size < 32 or size & (size - 1):
        raise ValueError(f"--netG {netG}: the U-Net size must be a power of two >= 32 (unet_32 ... unet_512)")
    return size.bit_length() - 1


def _apply_backend(net, backend, norm):
    net.backend = resolve_backend(backend)
    if net.backend == "triton":
        if norm == "syncbatch":  # convert_sync_batchnorm would replace the fused layers and drop their activations
            raise ValueError("--norm syncbatch needs --backend eager (the fused norm layers are not synchronised)")
        from fastpix.models.fused import fuse_norm_activations

        fuse_norm_activations(net)
        set_forward_path(net, strict=True)
    return net


def define_G(
    input_nc, output_nc, ngf, netG, norm="batch", use_dropout=False, init_type="normal", init_gain=0.02, backend=None
):
    norm_layer = get_norm_layer(norm)
    if netG in ("resnet_9blocks", "resnet_6blocks"):
        net = ResnetGenerator(input_nc, output_nc, ngf, norm_layer, use_dropout, n_blocks=int(netG[7]))
    elif netG.startswith("unet_"):
        net = UnetGenerator(input_nc, output_nc, unet_num_downs(netG), ngf, norm_layer, use_dropout)
    else:
        raise ValueError(
            f"--netG {netG!r} is not a known generator (unet_32 ... unet_512, resnet_6blocks, resnet_9blocks)"
        )
    return _apply_backend(init_weights(net, init_type, init_gain), backend, norm)


def define_D(input_nc, ndf, netD, n_layers_D=3, norm="batch", init_type="normal", init_gain=0.02, backend=None):
    norm_layer = get_norm_layer(norm)
    if netD == "basic":
        net = NLayerDiscriminator(input_nc, ndf, n_layers=3, norm_layer=norm_layer)
    elif netD == "n_layers":
        net = NLayerDiscriminator(input_nc, ndf, n_layers_D, norm_layer=norm_layer)
    elif netD == "pixel":
        net = PixelDiscriminator(input_nc, ndf, norm_layer=norm_layer)
    else:
        raise ValueError(f"--netD {netD!r} is not one of basic, n_layers, pixel")
    return _apply_backend(init_weights(net, init_type, init_gain), backend, norm)


def build_models(model_cfg, backend=None):
    """G and D for a ModelConfig (D sees the pair, so input_nc + output_nc channels)."""
    backend = model_cfg.backend if backend is None else backend
    G = define_G(
        model_cfg.input_nc,
        model_cfg.output_nc,
        model_cfg.ngf,
        model_cfg.netG,
        model_cfg.norm,
        not model_cfg.no_dropout,
        model_cfg.init_type,
        model_cfg.init_gain,
        backend,
    )
    D = define_D(
        model_cfg.input_nc + model_cfg.output_nc,
        model_cfg.ndf,
        model_cfg.netD,
        model_cfg.n_layers_D,
        model_cfg.norm,
        model_cfg.init_type,
        model_cfg.init_gain,
        backend,
    )
    return G, D


__all__ = [
    "define_G",
    "define_D",
    "build_models",
    "init_weights",
    "get_norm_layer",
    "resolve_backend",
    "set_forward_path",
    "tune_layers",
    "unet_num_downs",
    "use_triton_interpreter",
]
