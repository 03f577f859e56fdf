"""One pix2pix iteration, in the reference's order (docs/reference-compat.md, "The training step").

fake = G(A) once; D step on (A, fake.detach()) and (A, B) as two separate D calls (their BatchNorm statistics
are separate); then the G step against the just-updated D, with D frozen: loss_G = GAN(D(A, fake), real) + λ·L1.
"""

from __future__ import annotations

from typing import Any

import torch

from fastpix import runtime
from fastpix.losses import gan_loss, l1_loss

LOSS_NAMES = ("G_GAN", "G_L1", "D_real", "D_fake")


def model_backend(net: Any) -> str:
    """The backend define_G/define_D built `net` with, looking through DDP (.module) and torch.compile
    (._orig_mod) wrappers; 'eager' for a network built otherwise."""
    while not hasattr(net, "backend") and (hasattr(net, "module") or hasattr(net, "_orig_mod")):
        net = getattr(net, "module", None) or net._orig_mod
    return getattr(net, "backend", "eager")


def set_requires_grad(net: torch.nn.Module, flag: bool):
    for p in net.parameters():
        p.requires_grad_(flag)


class Pix2PixStep:
    """Holds G, D and their Adam optimizers; calling it runs one iteration and returns the losses (tensors).

    precision: fp32, or bf16/fp16 autocast (fp16 with a GradScaler whose state stays on the device).
    graph_safe: what a CUDA graph needs — the learning rate in a device tensor (changed without recapture),
    capturable Adam, and gradients zeroed in place rather than freed, so the captured kernels keep writing to
    the tensors the optimizers read.
    backend: 'eager' or 'triton' (the fused GAN and L1 losses); None takes G's (define_G records it).
    """

    def __init__(
        self,
        G,
        D,
        lr=2e-4,
        beta1=0.5,
        gan_mode="vanilla",
        lambda_L1=100.0,
        precision="fp32",
        device_type="cpu",
        graph_safe=False,
        backend=None,
    ):
        self.G, self.D = G, D
        self.gan_mode, self.lambda_L1 = gan_mode, lambda_L1
        self.backend = model_backend(G) if backend is None else backend
        self.device_type, self.graph_safe = device_type, graph_safe
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"--precision {precision!r} is not one of fp32, bf16, fp16")
        self.precision = precision
        # Fused Adam on CUDA, and on a CPU in bf16 (one pass over 57M parameters instead of a dozen); fp32 on a
        # CPU keeps the reference's per-parameter Adam and so its exact numbers.
        fused = device_type == "cuda" or precision != "fp32"
        # A device tensor lr is read by the captured optimizer kernels at every replay.
        lr_value = torch.tensor(lr, device=next(G.parameters()).device) if graph_safe else lr
        self.opt_G = torch.optim.Adam(
            G.parameters(), lr=lr_value, betas=(beta1, 0.999), fused=fused or None, capturable=graph_safe
        )
        lr_value = lr_value.clone() if graph_safe else lr
        self.opt_D = torch.optim.Adam(
            D.parameters(), lr=lr_value, betas=(beta1, 0.999), fused=fused or None, capturable=graph_safe
        )
        self.scaler = torch.amp.GradScaler(device_type, enabled=precision == "fp16")
        self.fake_B = None

    def autocast(self):
        return runtime.autocast(self.device_type, self.precision)

    def set_lr(self, lr: float):
        for opt in (self.opt_G, self.opt_D):
            for group in opt.param_groups:
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(lr)  # in place: a captured graph holds this very tensor
                else:
                    group["lr"] = lr

    def __call__(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict:
        scaler, set_to_none = self.scaler, not self.graph_safe
        with self.autocast():
            fake_B = self.G(real_A)
        if self.gan_mode == "none":
            return self._l1_only(fake_B, real_B)

        set_requires_grad(self.D, True)
        self.opt_D.zero_grad(set_to_none=set_to_none)
        with self.autocast():
            loss_D_fake = gan_loss(self.D(torch.cat((real_A, fake_B.detach()), 1)), False, self.gan_mode, self.backend)
            loss_D_real = gan_loss(self.D(torch.cat((real_A, real_B), 1)), True, self.gan_mode, self.backend)
        scaler.scale((loss_D_fake + loss_D_real) * 0.5).backward()
        scaler.step(self.opt_D)

        set_requires_grad(self.D, False)
        self.opt_G.zero_grad(set_to_none=set_to_none)
        with self.autocast():
            loss_G_GAN = gan_loss(self.D(torch.cat((real_A, fake_B), 1)), True, self.gan_mode, self.backend)
            loss_G_L1 = self._l1(fake_B, real_B)
        scaler.scale(loss_G_GAN + loss_G_L1).backward()
        scaler.step(self.opt_G)
        scaler.update()

        self.fake_B = fake_B.detach()
        return {
            "G_GAN": loss_G_GAN.detach(),
            "G_L1": loss_G_L1.detach(),
            "D_real": loss_D_real.detach(),
            "D_fake": loss_D_fake.detach(),
        }

    def _l1(self, fake_B, real_B):
        """λ·L1 in fp32: eager upcasts (as the reference's fp32 loss), the fused kernel accumulates in fp32."""
        if self.backend == "triton":
            return l1_loss(fake_B, real_B, self.lambda_L1, "triton")
        return l1_loss(fake_B.float(), real_B.float(), self.lambda_L1)

    def _l1_only(self, fake_B, real_B):
        """The paper's L1 baseline: G trained on λ·L1 alone; D is neither run nor updated."""
        self.opt_G.zero_grad(set_to_none=not self.graph_safe)
        loss_G_L1 = self._l1(fake_B, real_B)
        self.scaler.scale(loss_G_L1).backward()
        self.scaler.step(self.opt_G)
        self.scaler.update()
        self.fake_B = fake_B.detach()
        zero = torch.zeros((), device=fake_B.device)
        return {"G_GAN": zero, "G_L1": loss_G_L1.detach(), "D_real": zero, "D_fake": zero}

    def state_dict(self):
        state = {"opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict()}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state):
        for opt, key in ((self.opt_G, "opt_G"), (self.opt_D, "opt_D")):
            lrs = [g["lr"] for g in opt.param_groups]
            opt.load_state_dict(state[key])
            for group, lr in zip(opt.param_groups, lrs):
                if isinstance(lr, torch.Tensor):  # keep the device tensor a graph may hold; set_lr refills it
                    lr.fill_(float(group["lr"]))
                    group["lr"] = lr
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
