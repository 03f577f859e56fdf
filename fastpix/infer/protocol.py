"""The paper's (and the reference's default) test protocol over a split, shared by `fastpix test` and `eval`.

"At inference time, we run the generator net in exactly the same manner as during the training phase":
BatchNorm uses the statistics of the test batch (batch 1, so per-image statistics) and dropout stays on, with a
fixed seed so that runs repeat. --eval switches to running statistics and no dropout. Images are resized to
crop_size (load_size := crop_size), not flipped, taken in order, and the first num_test are used.
"""
from __future__ import annotations

import os

import torch

from fastpix import checkpoint as ckpt
from fastpix.data.dataset import PairedDataset
from fastpix.models import define_G
from fastpix.runtime import default_device


def find_generator_weights(checkpoint, checkpoints_dir, name, epoch="latest") -> tuple[str, str]:
    """(run folder, generator weights file). `checkpoint` (--checkpoint) is a run folder or a weights file;
    without it the run is <checkpoints_dir>/<name> and the file <epoch>_net_G.{safetensors,pth} in it."""
    if checkpoint is None:
        run_dir = os.path.join(checkpoints_dir, name)
        return run_dir, ckpt.find_weights(run_dir, epoch, "G")
    if os.path.isdir(checkpoint):
        return checkpoint, ckpt.find_weights(checkpoint, epoch, "G")
    if os.path.isfile(checkpoint):
        return os.path.dirname(os.path.abspath(checkpoint)), checkpoint
    raise ckpt.CheckpointError(f"--checkpoint {checkpoint}: no such run folder or generator weights file")


def build_generator(model_cfg, weights: str, device=None):
    G = define_G(model_cfg.input_nc, model_cfg.output_nc, model_cfg.ngf, model_cfg.netG, model_cfg.norm,
                 not model_cfg.no_dropout, model_cfg.init_type, model_cfg.init_gain, model_cfg.backend)
    ckpt.load_into(G, weights)
    return G.to(default_device(device))


def load_generator(model_cfg, checkpoints_dir, name, epoch="latest", device=None):
    return build_generator(model_cfg, find_generator_weights(None, checkpoints_dir, name, epoch)[1], device)


def protocol_name(eval_mode: bool, seed: int) -> str:
    if eval_mode:
        return "eval mode (--eval): running BatchNorm statistics, no dropout"
    return f"the paper's protocol: batch statistics (batch 1), dropout on, seed {seed}"


def protocol_dataset(model_cfg, data_cfg, phase) -> PairedDataset:
    return PairedDataset(data_cfg.dataroot, phase, data_cfg.direction, model_cfg.input_nc, model_cfg.output_nc,
                         data_cfg.preprocess, data_cfg.crop_size, data_cfg.crop_size, flip=False,
                         max_dataset_size=data_cfg.max_dataset_size, skip_bad_images=data_cfg.skip_bad_images)


def translate_split(G, dataset: PairedDataset, num: int, eval_mode: bool, seed: int, device):
    """Yield (stem, real_A, fake_B, real_B) CHW tensors in [-1, 1] for the first num items, one at a time."""
    G.eval() if eval_mode else G.train()
    torch.manual_seed(seed)
    with torch.no_grad():
        for index in range(min(num, len(dataset))):
            item = dataset[index]
            if item is None:
                continue
            fake = G(item["A"][None].to(device))[0].float().cpu()
            yield os.path.splitext(os.path.basename(item["A_paths"]))[0], item["A"], fake, item["B"]


def run_test(model_cfg, data_cfg, test_cfg) -> str:
    """Write <results_dir>/<name>/<phase>_<epoch>/ (images, index.html with per-image metrics); return it."""
    from fastpix.evaluate import score_and_write

    device = default_device(test_cfg.device)
    G = load_generator(model_cfg, test_cfg.checkpoints_dir, test_cfg.name, test_cfg.epoch, device)
    dataset = protocol_dataset(model_cfg, data_cfg, test_cfg.phase)
    out = os.path.join(test_cfg.results_dir, test_cfg.name, f"{test_cfg.phase}_{test_cfg.epoch}")
    items = translate_split(G, dataset, test_cfg.num_test, test_cfg.eval, test_cfg.seed, device)
    title = f"Experiment = {test_cfg.name}, Phase = {test_cfg.phase}, Epoch = {test_cfg.epoch}"
    score_and_write(items, out, title, protocol_name(test_cfg.eval, test_cfg.seed), sort=test_cfg.sort)
    return out
