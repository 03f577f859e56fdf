"""What the model-using tests share to make small networks meaningful."""

import torch
from torch.nn.modules.batchnorm import _BatchNorm


def perturb_batchnorms(net, mean_std=0.5, var_range=(0.5, 2.0)):
    """Move every BatchNorm's (γ, β) off their initial (1, 0) and its running statistics off (0, 1), so that a
    test sees whether each use of them (batch, per-sample or running statistics, folding) is right; returns net."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, _BatchNorm):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
                m.running_mean.normal_(0.0, mean_std)
                m.running_var.uniform_(*var_range)
    return net
