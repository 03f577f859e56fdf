"""What fastpix's networks carry beyond the reference's module trees: the backend they were built with and, under
backend 'triton', the fused conv forward chosen at build time. Neither is a parameter or a buffer: state_dict keys
stay the reference's."""

from typing import Any

import torch.nn as nn


class Network(nn.Module):
    """The base of the U-Net, ResNet and PatchGAN networks.

    backend: 'eager' or 'triton', set by define_G / define_D. fused_forward: None (the module path), or the fused
    conv forward (fastpix.models.fused_convs.FusedConvs, which owns the per-layer choices of this network) that
    set_forward_path gave a U-Net or PatchGAN for backend 'triton'; it is called as fused_forward(module, x).
    """

    backend = "eager"
    fused_forward: Any = None  # a FusedConvs (not imported here: fused_convs.py builds on the networks)

    @property
    def forward_path(self) -> str:
        """What a forward runs: 'eager', 'fused convs' or 'fused norms, aten convs' (the ResNet generator, or a
        network holding a layer the fused convs do not know)."""
        if self.backend == "eager":
            return "eager"
        return "fused convs" if self.fused_forward is not None else "fused norms, aten convs"
