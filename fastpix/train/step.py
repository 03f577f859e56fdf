"""One pix2pix iteration, in the reference's order (pix2pix.md, "Objective").

fake = G(A) once; D step on (A, fake.detach()) and (A, B) as two separate D calls (their BatchNorm statistics
are separate); then the G step against the just-updated D, with D frozen: loss_G = GAN(D(A, fake), real) + λ·L1.
"""
from __future__ import annotations

import torch

from fastpix.losses import gan_loss, l1_loss

LOSS_NAMES = ("G_GAN", "G_L1", "D_real", "D_fake")


def set_requires_grad(net: torch.nn.Module, flag: bool):
    for p in net.parameters():
        p.requires_grad_(flag)


class Pix2PixStep:
    """Holds G, D and their Adam optimizers; calling it runs one iteration and returns the losses (tensors)."""

    def __init__(self, G, D, lr=2e-4, beta1=0.5, gan_mode="vanilla", lambda_L1=100.0):
        self.G, self.D = G, D
        self.gan_mode, self.lambda_L1 = gan_mode, lambda_L1
        self.opt_G = torch.optim.Adam(G.parameters(), lr=lr, betas=(beta1, 0.999))
        self.opt_D = torch.optim.Adam(D.parameters(), lr=lr, betas=(beta1, 0.999))
        self.fake_B = None

    def set_lr(self, lr: float):
        for opt in (self.opt_G, self.opt_D):
            for group in opt.param_groups:
                group["lr"] = lr

    def __call__(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict:
        fake_B = self.G(real_A)

        set_requires_grad(self.D, True)
        self.opt_D.zero_grad(set_to_none=True)
        loss_D_fake = gan_loss(self.D(torch.cat((real_A, fake_B.detach()), 1)), False, self.gan_mode)
        loss_D_real = gan_loss(self.D(torch.cat((real_A, real_B), 1)), True, self.gan_mode)
        ((loss_D_fake + loss_D_real) * 0.5).backward()
        self.opt_D.step()

        set_requires_grad(self.D, False)
        self.opt_G.zero_grad(set_to_none=True)
        loss_G_GAN = gan_loss(self.D(torch.cat((real_A, fake_B), 1)), True, self.gan_mode)
        loss_G_L1 = l1_loss(fake_B, real_B, self.lambda_L1)
        (loss_G_GAN + loss_G_L1).backward()
        self.opt_G.step()

        self.fake_B = fake_B.detach()
        return {"G_GAN": loss_G_GAN.detach(), "G_L1": loss_G_L1.detach(), "D_real": loss_D_real.detach(),
                "D_fake": loss_D_fake.detach()}

    def state_dict(self):
        return {"opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict()}

    def load_state_dict(self, state):
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
