"""`fastpix test`: the paper's (and the reference's default) test protocol over a split.

"At inference time, we run the generator net in exactly the same manner as during the training phase":
BatchNorm uses the statistics of the test batch (batch 1, so per-image statistics) and dropout stays on.
--eval switches to running statistics and no dropout. Images are resized to crop_size (load_size := crop_size),
not flipped, taken in order, and the first num_test are written.
"""
from __future__ import annotations

import os

import torch

from fastpix import checkpoint as ckpt
from fastpix.data.dataset import PairedDataset
from fastpix.data.transforms import to_image_array
from fastpix.models import define_G
from fastpix.results import save_png, write_index
from fastpix.train.loop import default_device

IMAGE_LABELS = ("real_A", "fake_B", "real_B")


def load_generator(model_cfg, checkpoints_dir, name, epoch="latest", device=None):
    G = define_G(model_cfg.input_nc, model_cfg.output_nc, model_cfg.ngf, model_cfg.netG, model_cfg.norm,
                 not model_cfg.no_dropout, model_cfg.init_type, model_cfg.init_gain, model_cfg.backend)
    ckpt.load_into(G, ckpt.find_weights(os.path.join(checkpoints_dir, name), epoch, "G"))
    return G.to(default_device(device))


def run_test(model_cfg, data_cfg, test_cfg) -> str:
    """Write <results_dir>/<name>/<phase>_<epoch>/ and return that folder."""
    device = default_device(test_cfg.device)
    G = load_generator(model_cfg, test_cfg.checkpoints_dir, test_cfg.name, test_cfg.epoch, device)
    G.eval() if test_cfg.eval else G.train()
    dataset = PairedDataset(data_cfg.dataroot, test_cfg.phase, data_cfg.direction, model_cfg.input_nc,
                            model_cfg.output_nc, data_cfg.preprocess, data_cfg.crop_size, data_cfg.crop_size,
                            flip=False, max_dataset_size=data_cfg.max_dataset_size,
                            skip_bad_images=data_cfg.skip_bad_images)
    out = os.path.join(test_cfg.results_dir, test_cfg.name, f"{test_cfg.phase}_{test_cfg.epoch}")
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    torch.manual_seed(test_cfg.seed)
    rows = []
    with torch.no_grad():
        for index in range(min(test_cfg.num_test, len(dataset))):
            item = dataset[index]
            if item is None:
                continue
            fake = G(item["A"][None].to(device))[0]
            stem = os.path.splitext(os.path.basename(item["A_paths"]))[0]
            images = []
            for label, tensor in zip(IMAGE_LABELS, (item["A"], fake, item["B"])):
                filename = f"images/{stem}_{label}.png"
                save_png(to_image_array(tensor), os.path.join(out, filename))
                images.append((label, filename))
            rows.append((stem, images))
    protocol = "eval mode: running statistics, no dropout" if test_cfg.eval else \
        "the paper's protocol: batch statistics (batch 1), dropout on, seed %d" % test_cfg.seed
    write_index(out, f"Experiment = {test_cfg.name}, Phase = {test_cfg.phase}, Epoch = {test_cfg.epoch}", rows,
                header_html=f"<p>{protocol}</p>")
    return out
