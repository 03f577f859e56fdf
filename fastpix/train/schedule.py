"""Learning-rate policies of the reference, as a pure function of the epoch.

The reference steps its scheduler at the start of every epoch, so during epoch E (absolute, starting at
epoch_count) the scheduler has stepped k = E − epoch_count + 1 times. Computing the multiplier from E directly
needs no scheduler state, so a resumed run gets the same rate without restoring any.
"""
import math


def lr_multiplier(policy: str, epoch: int, epoch_count: int = 1, n_epochs: int = 100, n_epochs_decay: int = 100,
                  lr_decay_iters: int = 50) -> float:
    k = epoch - epoch_count + 1
    if policy == "linear":
        # The reference's lambda_rule(k) = 1 − max(0, k + epoch_count − n_epochs) / (n_epochs_decay + 1).
        return 1.0 - max(0, k + epoch_count - n_epochs) / float(n_epochs_decay + 1)
    if policy == "step":
        return 0.1 ** (k // lr_decay_iters)
    if policy == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * k / n_epochs))
    raise ValueError(f"--lr_policy {policy!r} is not one of linear, step, cosine")
