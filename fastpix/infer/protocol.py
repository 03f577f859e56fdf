"""The paper's (and the reference's default) test protocol over a split, shared by `fastpix test` and `eval`.

"At inference time, we run the generator net in exactly the same manner as during the training phase":
BatchNorm uses the statistics of the test batch (batch 1, so per-image statistics) and dropout stays on, with a
fixed seed so that runs repeat: the module path in fp32, as the reference, whose dropout masks come from the same
global generator. --eval switches to running statistics and no dropout, which is the Predictor's norm_mode
'running': its fastest path (BatchNorm folded; on a CPU the compiled packages, bf16 where the CPU has it). Images are
resized to crop_size (load_size := crop_size), not flipped, taken in order, and the first num_test are used.
"""

from __future__ import annotations

import logging
import os

import torch

from fastpix.config import check_model, model_kind
from fastpix.data import DATASETS
from fastpix.data.dataset import PairedDataset
from fastpix.infer.predictor import Predictor
from fastpix.progress import announced
from fastpix.runtime import default_device
from fastpix.store.architecture import ARCH_FIELDS
from fastpix.store.generator import load_generator

log = logging.getLogger(__name__)


def build_generator(model_cfg, weights: str, device=None):
    arch = {k: getattr(model_cfg, k) for k in ARCH_FIELDS}
    return load_generator(weights, backend=model_cfg.backend, **arch).to(default_device(device))


def protocol_name(eval_mode: bool, seed: int) -> str:
    if eval_mode:
        return "eval mode (--eval): running BatchNorm statistics, no dropout"
    return f"the paper's protocol: batch statistics (batch 1), dropout on, seed {seed}"


def protocol_dataset(model_cfg, data_cfg, phase) -> PairedDataset:
    """The split at the test transform, read as the model kind reads its data (colorization: Lab of single images)."""
    check_model(model_cfg, data_cfg)
    dataset_class = DATASETS[model_kind(vars(model_cfg), vars(data_cfg))]
    return dataset_class(
        data_cfg.dataroot,
        phase,
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


def translate_split(G, dataset: PairedDataset, num: int, eval_mode: bool, seed: int, device, precision=None):
    """Yield (stem, real_A, fake_B, real_B) CHW tensors in [-1, 1] for the first num items, one at a time (the
    generator's own tensors: colorization's Lab too)."""
    count = min(num, len(dataset))
    if eval_mode:
        # model "pix2pix": the data set's tensors are the network's own, colorization's Lab included
        predictor = Predictor(
            G, device=device, precision=precision, norm_mode="running", max_batch_size=1, images=count, model="pix2pix"
        )
        if predictor.runtime == "compiled":
            # Scores of one path: every image of the split compiled, rather than the first ones eager (within bf16
            # rounding, but not equal) while the package builds, as a server or `predict` would have it.
            with announced(
                log,
                f"waiting for the compiled generator ({dataset.crop_size}x{dataset.crop_size}) "
                "before the first image, so that every image runs the same code",
            ):
                predictor.warmup((dataset.crop_size, dataset.crop_size), wait=True)

        def translate(a):
            return predictor(a, output_type="pt").float().cpu()
    else:
        G.train()
        torch.manual_seed(seed)

        def translate(a):
            return G(a[None].to(device))[0].float().cpu()

    with torch.no_grad():
        read = 0
        for index in range(count):
            item = dataset[index]
            if item is None:
                continue
            read += 1
            fake = translate(item["A"])
            yield os.path.splitext(os.path.basename(item["A_paths"]))[0], item["A"], fake, item["B"]
        if not read:
            raise dataset.none_readable()
