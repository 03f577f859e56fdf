"""The U-Net generator of pix2pix, with the reference's module tree (and so its state_dict keys).

The generator is built from the innermost block outwards; each block holds a Sequential `model`:
  outermost: [down conv, inner block, ReLU, ConvT, Tanh]
  middle:    [LeakyReLU, down conv, down norm, inner block, ReLU, ConvT, up norm, (Dropout)]
  innermost: [LeakyReLU, down conv, ReLU, ConvT, up norm]
and every non-outermost block returns cat([x, block(x)]): the skip first.
"""

import torch
import torch.nn as nn

from fastpix.models.network import Network
from fastpix.models.norm import conv_has_bias


class UnetSkipConnectionBlock(nn.Module):
    def __init__(
        self,
        outer_nc,
        inner_nc,
        input_nc=None,
        submodule=None,
        outermost=False,
        innermost=False,
        norm_layer=nn.BatchNorm2d,
        use_dropout=False,
    ):
        super().__init__()
        self.outermost, self.innermost = outermost, innermost
        use_bias = conv_has_bias(norm_layer)
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        # Not in-place (the reference's is): the skip then carries the norm output rather than its LeakyReLU,
        # which the parent's ReLU makes identical in value and gradient (ReLU∘LeakyReLU = ReLU).
        downrelu = nn.LeakyReLU(0.2)
        uprelu = nn.ReLU()
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            layers = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [downrelu, downconv, uprelu, upconv, norm_layer(outer_nc)]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [downrelu, downconv, norm_layer(inner_nc), submodule, uprelu, upconv, norm_layer(outer_nc)]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(Network):
    """U-Net with num_downs downsamplings: a side of 2**num_downs becomes 1×1 at the bottleneck. Runs the fused
    conv forward when define_G gave it one (fastpix/models/network.py)."""

    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm_layer=nn.BatchNorm2d, use_dropout=False):
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"a U-Net needs at least 5 downsamplings (unet_32), got {num_downs}")
        self.num_downs = num_downs
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, norm_layer=norm_layer, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(
                ngf * 8, ngf * 8, submodule=block, norm_layer=norm_layer, use_dropout=use_dropout
            )
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, norm_layer=norm_layer)
        self.model = UnetSkipConnectionBlock(
            output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, norm_layer=norm_layer
        )

    def forward(self, x):
        multiple = 2**self.num_downs
        if x.dim() != 4 or x.shape[-1] % multiple or x.shape[-2] % multiple:
            raise ValueError(
                f"U-Net with {self.num_downs} downsamplings needs an input (N, C, H, W) with H and W "
                f"multiples of {multiple}; got shape {tuple(x.shape)}"
            )
        if self.fused_forward is not None and x.device.type != "meta":  # meta: shape-only FLOP counting
            return self.fused_forward(self, x)
        return self.model(x)
