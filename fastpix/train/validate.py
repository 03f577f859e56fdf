"""Validation during training (--val_freq): L1, PSNR and SSIM of the generator on the first --val_images pairs of the
val split, under the paper's test protocol as `fastpix test` and `fastpix eval` run it (fastpix/infer/protocol.py):
images resized to crop_size, not flipped, in order; the generator in training mode (batch statistics at batch 1,
dropout on) in fp32 with torch seeded by the test seed; outputs scored as they are saved (uint8).

It must not change training: a run with --val_freq gives the same weights, bit for bit, as one without. So torch's
generators are forked (the dropout masks of the next iterations), and every buffer the forward touches — BatchNorm's
running statistics, the fused kernels' dropout counters — is put back, in place (a CUDA graph holds their memory).
"""

from __future__ import annotations

import numpy as np
import torch

from fastpix import metrics
from fastpix.config import TestConfig, model_kind
from fastpix.data import DATASETS
from fastpix.data.dataset import DataError
from fastpix.data.pictures import SCORED, pictures

PROTOCOL_SEED = TestConfig.seed  # what `fastpix test` seeds with unless told otherwise


class Validator:
    """The val pairs, read once (at the start, so that an unreadable one is reported before training), and the
    generator to score on them."""

    def __init__(self, G, model_cfg, data_cfg, count: int, device):
        self.kind = model_kind(vars(model_cfg), vars(data_cfg))
        dataset = DATASETS[self.kind](
            data_cfg.dataroot,
            "val",
            data_cfg.direction,
            model_cfg.input_nc,
            model_cfg.output_nc,
            data_cfg.preprocess,
            data_cfg.crop_size,
            data_cfg.crop_size,
            flip=False,
            max_dataset_size=data_cfg.max_dataset_size,
            skip_bad_images=data_cfg.skip_bad_images,
        )
        items = [item for item in (dataset[i] for i in range(min(count, len(dataset)))) if item is not None]
        if not items:
            raise dataset.none_readable()
        self.G, self.device = G, torch.device(device)
        self.A = [item["A"] for item in items]
        self.B = [item["B"] for item in items]

    def __call__(self) -> tuple[dict, list]:
        """({"l1", "psnr", "ssim": means, "images": n}, [the pictures of each image, uint8 HWC]: real_A, fake_B,
        real_B; for colorization its L and its real and predicted colours, scored in RGB as `fastpix eval` does)."""
        fakes = self.translate()
        shown = [pictures(a, f, b, self.kind) for a, f, b in zip(self.A, fakes, self.B)]
        output, target = SCORED[self.kind]
        fake, real = np.stack([p[output] for p in shown]), np.stack([p[target] for p in shown])
        rows = [tuple(p.values()) for p in shown]
        scores = {"l1": metrics.l1(fake, real), "psnr": metrics.psnr(fake, real), "ssim": metrics.ssim(fake, real)}
        means = {name: round(metrics.summarize(values)["mean"], 5) for name, values in scores.items()}
        return {**means, "images": len(rows)}, rows

    def translate(self) -> list[torch.Tensor]:
        G = self.G
        buffers = {name: b.detach().clone() for name, b in G.named_buffers()}
        seeded = {name: m._rng_seeded for name, m in G.named_modules() if hasattr(m, "_rng_seeded")}
        training = G.training
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                for name, module in G.named_modules():
                    if name in seeded:  # the fused dropout draws its seed afresh, as a newly loaded generator does
                        module._rng_seeded = False
                torch.manual_seed(PROTOCOL_SEED)
                G.train()
                return [G(a[None].to(self.device)).float().cpu()[0] for a in self.A]
        finally:
            G.train(training)
            with torch.no_grad():
                for name, b in G.named_buffers():
                    b.copy_(buffers[name])
            for name, module in G.named_modules():
                if name in seeded:
                    module._rng_seeded = seeded[name]


def make_validator(G, model_cfg, data_cfg, train_cfg, device, say) -> Validator | None:
    """The run's Validator, or None with --val_freq 0, or (said once, through `say`) when there is no val split."""
    if not train_cfg.val_freq:
        return None
    try:
        return Validator(G, model_cfg, data_cfg, train_cfg.val_images, device)
    except DataError as exc:
        say(f"fastpix: --val_freq {train_cfg.val_freq}: no validation ({exc}); training goes on without it")
        return None
