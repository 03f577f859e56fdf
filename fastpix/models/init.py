"""Weight initialisation exactly as the reference's init_weights."""

import torch.nn as nn
from torch.nn import init


def init_weights(net: nn.Module, init_type: str = "normal", init_gain: float = 0.02) -> nn.Module:
    """Conv/ConvTranspose/Linear weights by init_type, their biases 0; BatchNorm weight ~ N(1, gain), bias 0."""
    if init_type not in ("normal", "xavier", "kaiming", "orthogonal"):
        raise ValueError(f"--init_type {init_type!r} is not one of normal, xavier, kaiming, orthogonal")

    def init_module(m):
        name = type(m).__name__
        if hasattr(m, "weight") and ("Conv" in name or "Linear" in name):
            if init_type == "normal":
                init.normal_(m.weight.data, 0.0, init_gain)
            elif init_type == "xavier":
                init.xavier_normal_(m.weight.data, gain=init_gain)
            elif init_type == "kaiming":
                init.kaiming_normal_(m.weight.data, a=0, mode="fan_in")
            else:
                init.orthogonal_(m.weight.data, gain=init_gain)
            if getattr(m, "bias", None) is not None:
                init.constant_(m.bias.data, 0.0)
        elif "BatchNorm2d" in name:
            init.normal_(m.weight.data, 1.0, init_gain)
            init.constant_(m.bias.data, 0.0)

    net.apply(init_module)
    return net
