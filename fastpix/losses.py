"""The pix2pix objective: a conditional GAN loss on PatchGAN logits plus λ·L1.

backend 'eager' is the reference's composition; 'triton' runs the fused kernels (loss and gradient in one pass,
no host synchronisation, deterministic): kernels/patchgan_loss.py and kernels/l1_loss.py. Both return fp32.
wgangp is a plain mean on every backend (the fused kernel has no such mode, and a mean is one reduction already).
"""

import torch
import torch.nn.functional as F

GAN_MODES = ("vanilla", "lsgan", "wgangp")


def gan_loss(logits: torch.Tensor, target_is_real: bool, mode: str = "vanilla", backend: str = "eager") -> torch.Tensor:
    """vanilla: BCE-with-logits, mean over all patch logits; lsgan: mean squared error; real 1.0, fake 0.0.
    wgangp: the reference's critic loss, −mean for real and +mean for fake (pix2pix adds no gradient penalty)."""
    if mode not in GAN_MODES:
        raise ValueError(f"--gan_mode {mode!r} is not one of {', '.join(GAN_MODES)} (none trains no discriminator)")
    if mode == "wgangp":
        mean = logits.float().mean()  # fp32 like the other modes' losses under autocast
        return -mean if target_is_real else mean
    if backend == "triton":
        from fastpix.kernels.patchgan_loss import patchgan_loss

        return patchgan_loss(logits, target_is_real, mode)
    target = torch.full_like(logits, 1.0 if target_is_real else 0.0)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.mse_loss(logits, target)


def l1_loss(output: torch.Tensor, target: torch.Tensor, weight: float = 1.0, backend: str = "eager") -> torch.Tensor:
    """weight·mean|output − target|. The triton kernel reads half-precision inputs and accumulates in fp32, so the
    caller need not upcast them (eager callers pass fp32 copies)."""
    if backend == "triton":
        from fastpix.kernels.l1_loss import l1_loss as fused_l1_loss

        return fused_l1_loss(output, target, weight)
    return F.l1_loss(output, target) * weight
