"""Learning-rate policies of the reference, as a pure function of the epoch.

The reference steps its scheduler at the start of every epoch, so during epoch E (absolute, starting at
epoch_count) the scheduler has stepped k = E − epoch_count + 1 times. Computing the rate from E directly
needs no scheduler state, so a resumed run gets the same rate without restoring any — plateau's included, since
the metric pix2pix steps it on is a constant (see plateau_rate).
"""

import math

POLICIES = ("linear", "step", "plateau", "cosine")
# networks.get_scheduler: ReduceLROnPlateau(optimizer, mode="min", factor=0.2, threshold=0.01, patience=5); torch's
# defaults for the rest (threshold_mode "rel", cooldown 0, min_lr 0, eps 1e-8).
PLATEAU_FACTOR, PLATEAU_PATIENCE, PLATEAU_EPS = 0.2, 5, 1e-8


def lr_multiplier(
    policy: str,
    epoch: int,
    epoch_count: int = 1,
    n_epochs: int = 100,
    n_epochs_decay: int = 100,
    lr_decay_iters: int = 50,
) -> float:
    """linear, step and cosine as a factor of the initial rate (plateau's depends on the rate: learning_rate)."""
    k = epoch - epoch_count + 1
    if policy == "linear":
        # The reference's lambda_rule(k) = 1 − max(0, k + epoch_count − n_epochs) / (n_epochs_decay + 1).
        return 1.0 - max(0, k + epoch_count - n_epochs) / float(n_epochs_decay + 1)
    if policy == "step":
        return 0.1 ** (k // lr_decay_iters)
    if policy == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * k / n_epochs))
    raise ValueError(f"--lr_policy {policy!r} is not one of {', '.join(POLICIES)}")


def learning_rate(
    policy: str,
    lr: float,
    epoch: int,
    epoch_count: int = 1,
    n_epochs: int = 100,
    n_epochs_decay: int = 100,
    lr_decay_iters: int = 50,
) -> float:
    """The rate of `epoch`: lr × lr_multiplier; plateau's is computed from lr itself, as torch does, so that its
    eps test and roundings are torch's."""
    if policy == "plateau":
        return plateau_rate(lr, epoch - epoch_count + 1)
    return lr * lr_multiplier(policy, epoch, epoch_count, n_epochs, n_epochs_decay, lr_decay_iters)


def plateau_rate(lr: float, k: int) -> float:
    """ReduceLROnPlateau's rate after k steps on the metric pix2pix gives it: BaseModel.metric, which is 0 and which
    pix2pix never sets. The first step makes best = 0; no later 0 is below best × (1 − threshold), so every
    (patience + 1)-th step after it (k = 7, 13, 19, …) multiplies the rate by the factor — unless the drop would be
    at most eps, and then no later one is made either."""
    for _ in range(max(0, k - 1) // (PLATEAU_PATIENCE + 1)):
        reduced = lr * PLATEAU_FACTOR
        if lr - reduced <= PLATEAU_EPS:
            break
        lr = reduced
    return lr
