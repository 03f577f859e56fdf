"""FID and KID from a user-supplied Inception network (fastpix never downloads weights).

The network is a TorchScript file mapping a uint8 batch (N, 3, H, W) in [0, 255] to features (N, D) — the form
of the widely used `inception-2015-12-05.pt` (StyleGAN2-ADA's export; pass it with --inception-weights). Nothing
else is assumed about it, except that a forward() with a `return_features` argument is called with
return_features=True (that file returns class probabilities otherwise, and FID is defined on its pool features).

FID = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) (Heusel et al. 2017), with Tr((Σ₁Σ₂)^½) computed as the trace of the
square root of the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½ (same eigenvalues, stable). KID is the unbiased MMD² with the
cubic polynomial kernel k(x, y) = (xᵀy / D + 1)³, averaged over random subsets (Bińkowski et al. 2018).
"""

from __future__ import annotations

import numpy as np
import torch

from fastpix.store.user_networks import load_torchscript


def load_feature_network(path: str, device: torch.device):
    return load_torchscript(path, "--inception-weights", "feature network", device)


def forward_options(net) -> dict:
    arguments = {a.name for a in net.forward.schema.arguments} if hasattr(net.forward, "schema") else set()
    return {"return_features": True} if "return_features" in arguments else {}


@torch.no_grad()
def features(net, images_uint8: list[np.ndarray], device: torch.device, batch_size: int = 32) -> np.ndarray:
    """HWC uint8 RGB images (same size within a batch is not required: each runs alone if sizes differ)."""
    options = forward_options(net)
    out = []
    for i in range(0, len(images_uint8), batch_size):
        chunk = images_uint8[i : i + batch_size]
        if len({im.shape for im in chunk}) == 1:
            batch = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).to(device)
            out.append(net(batch, **options).float().cpu().numpy().reshape(len(chunk), -1))
        else:
            for im in chunk:
                x = torch.from_numpy(im[None]).permute(0, 3, 1, 2).to(device)
                out.append(net(x, **options).float().cpu().numpy().reshape(1, -1))
    return np.concatenate(out).astype(np.float64)


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fid(feat_a: np.ndarray, feat_b: np.ndarray) -> float:
    mu_a, mu_b = feat_a.mean(0), feat_b.mean(0)
    cov_a, cov_b = np.cov(feat_a, rowvar=False), np.cov(feat_b, rowvar=False)
    root_a = _sqrtm_psd(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def kid(feat_a: np.ndarray, feat_b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0):
    """(mean, std) of the unbiased MMD² over random subsets."""
    n = min(len(feat_a), len(feat_b), subset_size)
    if n < 2:
        raise ValueError("KID needs at least 2 images on each side")
    d = feat_a.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = feat_a[rng.choice(len(feat_a), n, replace=False)]
        y = feat_b[rng.choice(len(feat_b), n, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (n * (n - 1)) - 2 * kxy.mean()
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))
