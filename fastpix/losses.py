"""The pix2pix objective: a conditional GAN loss on PatchGAN logits plus λ·L1."""
import torch
import torch.nn.functional as F


def gan_loss(logits: torch.Tensor, target_is_real: bool, mode: str = "vanilla") -> torch.Tensor:
    """vanilla: BCE-with-logits, mean over all patch logits; lsgan: mean squared error. Real 1.0, fake 0.0."""
    target = torch.full_like(logits, 1.0 if target_is_real else 0.0)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(logits, target)
    if mode == "lsgan":
        return F.mse_loss(logits, target)
    raise ValueError(f"--gan_mode {mode!r} is not one of vanilla, lsgan (none trains no discriminator)")


def l1_loss(output: torch.Tensor, target: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    return F.l1_loss(output, target) * weight
