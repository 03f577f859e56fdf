"""The PatchGAN discriminators, with the reference's module trees. Outputs are raw logits (no sigmoid).

Each runs the fused conv forward on its Sequential when define_D gave it one (fastpix/models/network.py).
"""

import torch.nn as nn

from fastpix.models.network import Network
from fastpix.models.norm import conv_has_bias


class NLayerDiscriminator(Network):
    """n_layers = 3 is the 70×70 PatchGAN ('basic'): 30×30 logits for a 256×256 input."""

    def __init__(self, input_nc, ndf=64, n_layers=3, norm_layer=nn.BatchNorm2d):
        super().__init__()
        use_bias = conv_has_bias(norm_layer)
        layers = [nn.Conv2d(input_nc, ndf, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=2, padding=1, bias=use_bias),
                norm_layer(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=1, padding=1, bias=use_bias),
            norm_layer(ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        if self.fused_forward is not None and x.device.type != "meta":  # meta: shape-only FLOP counting
            return self.fused_forward(self.model, x)
        return self.model(x)


class PixelDiscriminator(Network):
    """1×1 PixelGAN: judges each pixel's colour only."""

    def __init__(self, input_nc, ndf=64, norm_layer=nn.BatchNorm2d):
        super().__init__()
        use_bias = conv_has_bias(norm_layer)
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, kernel_size=1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, kernel_size=1, bias=use_bias),
            norm_layer(ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, kernel_size=1, bias=use_bias),
        )

    def forward(self, x):
        if self.fused_forward is not None and x.device.type != "meta":
            return self.fused_forward(self.net, x)
        return self.net(x)
