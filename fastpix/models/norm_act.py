"""The fused norm + activation (+ dropout) layers of backend='triton': drop-in subclasses of nn.BatchNorm2d and
nn.InstanceNorm2d with their parents' state_dict, running on kernels/batch_norm_act.py.
"""

import torch
from torch import nn

from fastpix.kernels.batch_norm_act import ACTIVATIONS, batch_norm_act, instance_norm_act


class _FusedNormAct:
    """Mixin of the fused modules: their activation settings, and `rng_state`, their dropout's int64 [seed, offset]
    on the module's device.

    `rng_state` is kept in a non-persistent buffer (the state_dict stays identical to the torch parent's). The seed
    is drawn from torch's generator on the first access (a device-side draw, no host synchronisation), not at
    construction: so building a module consumes no random numbers and, as with nn.Dropout, torch.manual_seed before
    a run (or another seed per DDP rank) decides the masks. Every reader (the module's forward, the fused conv path)
    goes through it.
    """

    def _init_fused(self, activation, slope, dropout_p):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
        self.activation, self.slope, self.dropout_p = activation, slope, dropout_p
        self.register_buffer("_rng_state", torch.zeros(2, dtype=torch.int64), persistent=False)
        self._rng_seeded = False

    def extra_repr(self):
        return f"{super().extra_repr()}, activation={self.activation}, slope={self.slope}, dropout_p={self.dropout_p}"

    @property
    def rng_state(self):
        if not self._rng_seeded:
            seed = torch.randint(0, 2**62, (1,), dtype=torch.int64, device=self._rng_state.device)
            self._rng_state.copy_(torch.cat([seed, torch.zeros_like(seed)]))
            self._rng_seeded = True
        return self._rng_state


class BatchNormAct2d(_FusedNormAct, nn.BatchNorm2d):
    """nn.BatchNorm2d followed by an activation and (in training) dropout, fused. Same state_dict keys and the same
    training/eval, momentum (None: cumulative average) and track_running_stats behaviour as nn.BatchNorm2d."""

    def __init__(
        self,
        num_features,
        eps=1e-5,
        momentum=0.1,
        affine=True,
        track_running_stats=True,
        activation="none",
        slope=0.2,
        dropout_p=0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self._init_fused(activation, slope, dropout_p)

    def forward(self, x):
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as torch (which also reads the count on host)
                factor = 1.0 / float(self.num_batches_tracked)
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        p = self.dropout_p if self.training else 0.0
        track = not self.training or self.track_running_stats
        return batch_norm_act(
            x,
            self.weight,
            self.bias,
            self.running_mean if track else None,
            self.running_var if track else None,
            batch_stats,
            factor,
            self.eps,
            self.activation,
            self.slope,
            p,
            self.rng_state if p > 0 else None,
        )


class InstanceNormAct2d(_FusedNormAct, nn.InstanceNorm2d):
    """nn.InstanceNorm2d followed by an activation and (in training) dropout, fused. Same state_dict as
    nn.InstanceNorm2d; running statistics are not supported (pix2pix uses track_running_stats=False)."""

    def __init__(
        self,
        num_features,
        eps=1e-5,
        momentum=0.1,
        affine=False,
        track_running_stats=False,
        activation="none",
        slope=0.2,
        dropout_p=0.0,
        device=None,
        dtype=None,
    ):
        if track_running_stats:
            raise ValueError("InstanceNormAct2d supports track_running_stats=False only (the pix2pix setting)")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self._init_fused(activation, slope, dropout_p)

    def forward(self, x):
        p = self.dropout_p if self.training else 0.0
        return instance_norm_act(
            x, self.weight, self.bias, self.eps, self.activation, self.slope, p, self.rng_state if p > 0 else None
        )
