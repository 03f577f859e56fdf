"""Normalisation layers by name, with the reference's bias rule."""

import functools

import torch.nn as nn


def get_norm_layer(norm: str):
    """batch: BatchNorm2d (affine, running stats); instance: InstanceNorm2d (no affine, no running stats); none."""
    if norm in ("batch", "syncbatch"):  # syncbatch: converted to SyncBatchNorm when training distributed
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if norm == "none":
        return lambda num_features: nn.Identity()
    raise ValueError(f"--norm {norm!r} is not one of batch, instance, none, syncbatch")


def conv_has_bias(norm_layer) -> bool:
    """A conv carries a bias only under InstanceNorm (BatchNorm's shift makes it redundant).

    The reference applies this rule to every conv of a network, also where no norm follows, and — because its test
    compares the factory to InstanceNorm2d — gives no bias under norm 'none'. Checkpoints depend on it.
    """
    return isinstance(norm_layer, functools.partial) and norm_layer.func is nn.InstanceNorm2d
