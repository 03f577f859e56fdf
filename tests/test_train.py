"""The training step's update order, the LR policies, determinism, and exact resume."""

import dataclasses
import json
import pathlib

import pytest
import torch

from fastpix.config import DataConfig, ModelConfig, TrainConfig
from fastpix.errors import CheckpointError
from fastpix.losses import gan_loss
from fastpix.models import define_D, define_G
from fastpix.store.weights import load_train_state, load_weights, save_weights, weights_metadata
from fastpix.train.loop import train
from fastpix.train.schedule import learning_rate, lr_multiplier
from fastpix.train.step import Pix2PixStep


def tiny_models():
    return define_G(3, 3, 4, "unet_32", "batch", True, backend="eager"), define_D(6, 4, "basic", backend="eager")


def twin_models():
    """(G, D, G2, D2): tiny networks and copies of them with the same weights."""
    G, D = tiny_models()
    G2, D2 = tiny_models()
    G2.load_state_dict(G.state_dict())
    D2.load_state_dict(D.state_dict())
    return G, D, G2, D2


def test_update_order_detached_fake_and_d_updated_before_g_loss():
    G, D = tiny_models()
    step = Pix2PixStep(G, D)
    calls = []
    D.register_forward_pre_hook(
        lambda m, inp: calls.append((inp[0].detach().clone(), inp[0].requires_grad, D.model[0].weight.detach().clone()))
    )
    grads_at_D_step = []
    original_step = step.opt_D.step

    def recording_step(*a, **k):
        grads_at_D_step.append(([p.grad for p in G.parameters()], [p.grad.clone() for p in D.parameters()]))
        return original_step(*a, **k)

    step.opt_D.step = recording_step
    A, B = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    step(A, B)
    (fake_in, fake_grad, w1), (real_in, real_grad, w2), (g_in, g_grad, w3) = calls
    assert not fake_grad and g_grad  # D's step sees a detached fake; G's step sees the graph
    assert torch.equal(fake_in, g_in) and torch.equal(real_in, torch.cat([A, B], 1))  # one fake for both
    grads_G, grads_D = grads_at_D_step[0]
    assert all(g is None for g in grads_G)  # the D loss sent nothing into G
    assert torch.equal(w1, w2) and not torch.equal(w2, w3)  # D updated between its step and G's loss
    assert torch.equal(w3, D.model[0].weight)  # and frozen during G's step
    assert all(torch.equal(p.grad, g) for p, g in zip(D.parameters(), grads_D))  # G's loss sent nothing into D


def test_step_equals_the_objective_written_out():
    """One step against the reference's objective (docs/reference-compat.md, "The training step"), computed with
    plain torch on copies of the networks."""
    G, D, G2, D2 = twin_models()
    A, B = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    torch.manual_seed(5)
    Pix2PixStep(G, D, lr=1e-3, gan_mode="lsgan", lambda_L1=10.0)(A, B)

    torch.manual_seed(5)
    opt_G = torch.optim.Adam(G2.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(D2.parameters(), lr=1e-3, betas=(0.5, 0.999))
    fake = G2(A)
    pf, pr = D2(torch.cat([A, fake.detach()], 1)), D2(torch.cat([A, B], 1))
    (0.5 * ((pf**2).mean() + ((pr - 1) ** 2).mean())).backward()
    opt_D.step()
    for p in D2.parameters():
        p.requires_grad_(False)
    opt_G.zero_grad()
    (((D2(torch.cat([A, fake], 1)) - 1) ** 2).mean() + 10.0 * (fake - B).abs().mean()).backward()
    opt_G.step()
    for a, b in zip(
        list(G.state_dict().values()) + list(D.state_dict().values()),
        list(G2.state_dict().values()) + list(D2.state_dict().values()),
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_linear_policy_is_the_reference_lambda_rule():
    # epoch_count 1, 100 + 100 epochs: full rate through epoch 99, then linear to 0 at epoch 200
    assert lr_multiplier("linear", 1) == 1.0 and lr_multiplier("linear", 99) == 1.0
    assert lr_multiplier("linear", 100) == pytest.approx(1 - 1 / 101)
    assert lr_multiplier("linear", 200) == pytest.approx(0.0)
    # resuming with --epoch_count 150 gives the same rate for the same absolute epoch
    assert lr_multiplier("linear", 160, epoch_count=150) == lr_multiplier("linear", 160)
    assert lr_multiplier("step", 49) == 1.0 and lr_multiplier("step", 50) == pytest.approx(0.1)
    assert lr_multiplier("cosine", 50, n_epochs=100) == pytest.approx(
        0.5 * (1 + torch.cos(torch.tensor(torch.pi * 50 / 100)).item())
    )


def test_plateau_policy_is_the_references_reduce_on_plateau_on_pix2pix_metric():
    """The reference steps ReduceLROnPlateau(mode='min', factor=0.2, threshold=0.01, patience=5) at the start of every
    epoch on BaseModel.metric, which pix2pix leaves at 0; 60 epochs reach torch's eps stop (7 drops from 2e-4)."""
    for lr in (2e-4, 1.0):
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.2, threshold=0.01, patience=5)
        rates = []
        for epoch in range(3, 63):  # --epoch_count 3
            plateau.step(0)
            rates.append(learning_rate("plateau", lr, epoch, epoch_count=3))
            assert rates[-1] == opt.param_groups[0]["lr"], (lr, epoch)
        assert rates[5] == lr and rates[6] == lr * 0.2  # the 7th step is the first drop
    assert len(set(rates)) == 10 and len({learning_rate("plateau", 2e-4, e) for e in range(1, 61)}) == 8


def test_wgangp_is_the_references_critic_loss_without_penalty():
    logits = torch.randn(2, 1, 6, 6, dtype=torch.bfloat16)
    assert torch.equal(gan_loss(logits, True, "wgangp"), -logits.float().mean())
    assert torch.equal(gan_loss(logits, False, "wgangp", backend="triton"), logits.float().mean())  # no kernel
    G, D, G2, D2 = twin_models()
    A, B = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    torch.manual_seed(5)
    losses = Pix2PixStep(G, D, lr=1e-3, gan_mode="wgangp", lambda_L1=10.0)(A, B)
    torch.manual_seed(5)
    opt_G = torch.optim.Adam(G2.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(D2.parameters(), lr=1e-3, betas=(0.5, 0.999))
    fake = G2(A)
    pf, pr = D2(torch.cat([A, fake.detach()], 1)), D2(torch.cat([A, B], 1))
    (0.5 * (pf.mean() - pr.mean())).backward()
    opt_D.step()
    for p in D2.parameters():
        p.requires_grad_(False)
    opt_G.zero_grad()
    (-D2(torch.cat([A, fake], 1)).mean() + 10.0 * (fake - B).abs().mean()).backward()
    opt_G.step()
    assert losses["D_real"] == -pr.mean() and losses["D_fake"] == pf.mean()
    for a, b in zip(
        list(G.state_dict().values()) + list(D.state_dict().values()),
        list(G2.state_dict().values()) + list(D2.state_dict().values()),
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def configs(data, tmp_path, **train_overrides):
    model = ModelConfig(netG="unet_64", ngf=4, ndf=4)  # unet_64 has a dropout level: resume must restore its RNG
    data_cfg = DataConfig(dataroot=data, load_size=72, crop_size=64, num_threads=0)
    train_cfg = TrainConfig(
        name="run",
        checkpoints_dir=str(tmp_path),
        batch_size=2,
        n_epochs=1,
        n_epochs_decay=2,
        print_freq=1,
        display_freq=3,
        save_epoch_freq=1,
        seed=11,
    )
    return model, data_cfg, dataclasses.replace(train_cfg, **train_overrides)


def final_state(run_dir):
    G = load_weights(f"{run_dir}/latest_net_G.safetensors")
    D = load_weights(f"{run_dir}/latest_net_D.safetensors")
    return G, D, load_train_state(f"{run_dir}/latest_train_state.pt")


def assert_same_run(a, b):
    for sa, sb in zip(a[:2], b[:2]):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    for net in ("opt_G", "opt_D"):
        for pa, pb in zip(a[2]["optimizers"][net]["state"].values(), b[2]["optimizers"][net]["state"].values()):
            assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert a[2]["iteration"] == b[2]["iteration"] and a[2]["epoch"] == b[2]["epoch"]


def test_resume_is_exact(tiny_data, tmp_path):
    """7 iterations in one run equal 3, stop, resume, 4 more — bit for bit (across an epoch boundary)."""
    whole = train(*configs(tiny_data, tmp_path / "whole", max_iters=7), progress=False)
    train(*configs(tiny_data, tmp_path / "parts", max_iters=3), progress=False)
    parts = train(*configs(tiny_data, tmp_path / "parts", max_iters=7, continue_train=True), progress=False)
    assert_same_run(final_state(whole), final_state(parts))
    assert final_state(whole)[2]["iteration"] == 7


def test_plateau_resume_is_exact_and_drops_the_rate_at_epoch_7(tiny_data, tmp_path):
    """One iteration an epoch (2 pairs, batch 2): 8 epochs in one run equal 5, stop, resume, 3 more."""

    def run(folder, **kw):
        model, data_cfg, train_cfg = configs(
            tiny_data,
            tmp_path / folder,
            lr_policy="plateau",
            n_epochs=8,
            n_epochs_decay=0,
            save_epoch_freq=100,
            display_freq=100,
            **kw,
        )
        return train(model, dataclasses.replace(data_cfg, max_dataset_size=2), train_cfg, progress=False)

    whole = run("whole")
    run("parts", max_iters=5)
    parts = run("parts", continue_train=True)
    assert_same_run(final_state(whole), final_state(parts))
    with open(f"{parts}/metrics.jsonl") as log:
        rates = [json.loads(line)["lr"] for line in log]
    assert rates == [2e-4] * 6 + [2e-4 * 0.2] * 2


def test_same_seed_same_weights_and_epoch_checkpoints(tiny_data, tmp_path):
    a = train(*configs(tiny_data, tmp_path / "a", max_iters=5), progress=False)
    b = train(*configs(tiny_data, tmp_path / "b", max_iters=5), progress=False)
    assert_same_run(final_state(a), final_state(b))
    full = train(*configs(tiny_data, tmp_path / "c"), progress=False)  # 3 epochs of 4 iterations
    state = final_state(full)[2]
    assert state["iteration"] == 12 and state["epoch"] == 4
    for e in (1, 2, 3):
        assert weights_metadata(f"{full}/{e}_net_G.safetensors")["iteration"] == str(4 * e)


def test_refuses_to_overwrite_a_run_and_detects_a_torn_save(tiny_data, tmp_path):
    run = train(*configs(tiny_data, tmp_path, max_iters=2), progress=False)
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(*configs(tiny_data, tmp_path, max_iters=2), progress=False)
    G = define_G(3, 3, 4, "unet_64", "batch", True, backend="eager")
    save_weights(f"{run}/latest_net_G.safetensors", G, {"iteration": 99})
    with pytest.raises(CheckpointError, match="iteration 99 but the train state is from 2"):
        train(*configs(tiny_data, tmp_path, max_iters=4, continue_train=True), progress=False)


def test_metrics_log_and_samples(tiny_data, tmp_path):
    import json
    import os

    run = train(*configs(tiny_data, tmp_path, max_iters=4), progress=False)
    lines = [json.loads(line) for line in pathlib.Path(f"{run}/metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in lines] == [1, 2, 3, 4]
    assert all(set(r) >= {"G_GAN", "G_L1", "D_real", "D_fake", "lr", "img_per_s"} for r in lines)
    assert lines[0]["engine"] == {"cuda_graph": "off", "layer_choices": None}  # logged once: it did not change
    assert not any("engine" in r for r in lines[1:])
    assert sorted(os.listdir(f"{run}/samples")) == ["iter_0000001.png", "iter_0000003.png"]


def test_l1_only_baseline_trains_no_discriminator(tiny_data, tmp_path):
    G, D = tiny_models()
    before = {k: v.clone() for k, v in D.state_dict().items()}
    calls = []
    D.register_forward_pre_hook(lambda *_: calls.append(1))
    losses = Pix2PixStep(G, D, gan_mode="none")(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    assert not calls and all(torch.equal(v, D.state_dict()[k]) for k, v in before.items())
    assert float(losses["G_L1"]) > 0 and float(losses["G_GAN"]) == 0


def test_loss_plot_and_tensorboard(tiny_data, tmp_path):
    import os

    from PIL import Image

    run = train(*configs(tiny_data, tmp_path, max_iters=4, tensorboard=True), progress=False)
    assert Image.open(f"{run}/loss.png").size[0] > 500
    events = [f for f in os.listdir(f"{run}/tensorboard") if f.startswith("events.out.tfevents")]
    assert events and os.path.getsize(f"{run}/tensorboard/{events[0]}") > 500
