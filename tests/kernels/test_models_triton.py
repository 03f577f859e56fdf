"""backend='triton' against backend='eager': the same state_dict layout, the same outputs and gradients on the same
weights, the same training step; and `fastpix train --backend triton` on a CPU (through Triton's interpreter)."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from harness import assert_close
from tiny_models import perturb_batchnorms

from fastpix.kernels.batch_norm_act import dropout_mask
from fastpix.models import define_D, define_G
from fastpix.models.norm_act import BatchNormAct2d, InstanceNormAct2d
from fastpix.train.step import Pix2PixStep

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _no_tf32(monkeypatch):
    """Both backends run the same aten convolutions; TF32 would round their slightly different inputs apart."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def pair(factory, *args, **kwargs):
    """(eager, triton) networks of one architecture with identical weights, on DEVICE, in training mode."""
    eager = factory(*args, backend="eager", **kwargs)
    eager = perturb_batchnorms(eager, mean_std=0.1, var_range=(0.5, 1.5)).to(DEVICE).train()
    fused = factory(*args, backend="triton", **kwargs).to(DEVICE).train()
    fused.load_state_dict(eager.state_dict(), strict=True)
    return eager, fused


def assert_same_state(eager, fused, what, scale=1.0):
    a, b = eager.state_dict(), fused.state_dict()
    assert list(a) == list(b)
    for k in a:
        if a[k].is_floating_point():
            assert_close(b[k], a[k], torch.float32, f"{what} {k}", scale=scale)
        else:
            assert torch.equal(a[k], b[k]), f"{what} {k}"


@pytest.mark.parametrize(
    "build",
    [
        lambda backend: define_G(3, 3, 64, "unet_256", "batch", True, backend=backend),
        lambda backend: define_G(3, 3, 64, "unet_256", "instance", True, backend=backend),
        lambda backend: define_G(3, 3, 8, "resnet_6blocks", "batch", True, backend=backend),
        lambda backend: define_D(6, 64, "basic", backend=backend),
        lambda backend: define_D(6, 64, "pixel", norm="instance", backend=backend),
    ],
    ids=["unet_256-batch", "unet_256-instance", "resnet_6blocks", "basic_D", "pixel_D-instance"],
)
def test_state_dict_layout_and_seeded_weights_equal_eager(build):
    torch.manual_seed(3)
    eager = build("eager")
    after_eager = torch.rand(1)
    torch.manual_seed(3)
    fused = build("triton")
    after_fused = torch.rand(1)
    sd_e, sd_f = eager.state_dict(), fused.state_dict()
    assert list(sd_e) == list(sd_f)
    assert all(torch.equal(sd_e[k], sd_f[k]) for k in sd_e)  # same seed, same weights: no extra draws
    assert torch.equal(after_eager, after_fused)
    assert fused.backend == "triton"
    fused_layers = [m for m in fused.modules() if isinstance(m, (BatchNormAct2d, InstanceNormAct2d))]
    eager_norms = [m for m in eager.modules() if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d))]
    assert len(fused_layers) == len(eager_norms) > 0  # every norm runs fused


def test_unet_fusion_plan():
    """Down norms carry the LeakyReLU of the level below, up norms the ReLU (and Dropout) of the concat."""
    G = define_G(3, 3, 8, "unet_64", "batch", True, backend="triton")
    level2 = G.model.model[1].model
    assert isinstance(level2[0], nn.LeakyReLU)  # its input is the outermost conv's raw output: no norm to fuse
    assert level2[2].activation == "leaky_relu" and level2[6].activation == "relu"
    level3 = level2[3].model
    assert isinstance(level3[0], nn.Identity) and isinstance(level3[4], nn.ReLU)  # the concat's ReLU stays
    dropout_level = level3[3].model[3].model  # unet_64: one ngf·8 level with dropout
    assert dropout_level[6].dropout_p == 0.5 and isinstance(dropout_level[7], nn.Identity)


def test_syncbatch_is_refused_with_triton():
    with pytest.raises(ValueError, match="--norm syncbatch needs --backend eager"):
        define_D(6, 8, "basic", norm="syncbatch", backend="triton")


def forward_backward(net, x):
    out = net(x)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(out.device)
    (out * grad).sum().backward()
    return out.detach(), {k: p.grad for k, p in net.named_parameters()}


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_unet_and_patchgan_match_eager(norm):
    """unet_32 (ngf 4) and basic D (ndf 4), training mode: output, every parameter gradient, running stats."""
    for eager, fused, shape in (
        pair(define_G, 3, 3, 4, "unet_32", norm, False) + ((2, 3, 32, 32),),
        pair(define_D, 6, 4, "basic", norm=norm) + ((2, 6, 32, 32),),
    ):
        x = torch.randn(shape).to(DEVICE)
        out_e, grads_e = forward_backward(eager, x)
        out_f, grads_f = forward_backward(fused, x.contiguous(memory_format=torch.channels_last))
        # BatchNorm over 2×2×2 values at the U-Net's bottom amplifies fp32 rounding a little: 10× the kernel
        # tolerance, still far below what a wrong term, activation or skip would give (≈1e-1).
        assert_close(out_f, out_e, torch.float32, "output", scale=10)
        for k in grads_e:
            assert_close(grads_f[k], grads_e[k], torch.float32, f"grad {k}", scale=100)
        assert_same_state(eager, fused, "running stats", scale=10)


class KernelMaskDropout(nn.Module):
    """Dropout with the mask the fused kernel draws from a given [seed, offset]."""

    def __init__(self, rng_state, p):
        super().__init__()
        self.rng_state, self.p = rng_state, p

    def forward(self, x):
        return x * dropout_mask(x.shape, self.rng_state, self.p).to(x.dtype) / (1 - self.p)


def test_unet_dropout_uses_the_kernel_mask():
    """unet_64 has one dropout level: with the eager Dropout replaced by the mask the fused up norm draws, the
    networks agree, forward and backward — the mask is regenerated, not stored, in backward. The fused layer
    seeds itself from torch's generator on first use, so torch.manual_seed decides its masks."""
    eager, fused = pair(define_G, 3, 3, 2, "unet_64", "batch", True)
    block_e = eager.model.model[1].model[3].model[3].model[3].model  # level 5 of 6, the dropout level
    block_f = fused.model.model[1].model[3].model[3].model[3].model
    torch.manual_seed(11)
    seed = torch.randint(0, 2**62, (1,), dtype=torch.int64, device=DEVICE)  # the draw the fused layer will make
    block_e[7] = KernelMaskDropout(torch.cat([seed, torch.zeros_like(seed)]), 0.5)
    x = torch.randn(1, 3, 64, 64).to(DEVICE)
    out_e, grads_e = forward_backward(eager, x)
    torch.manual_seed(11)
    out_f, grads_f = forward_backward(fused, x)
    assert_close(out_f, out_e, torch.float32, "output", scale=10)
    for k in grads_e:
        assert_close(grads_f[k], grads_e[k], torch.float32, f"grad {k}", scale=100)
    offset = block_e[7].rng_state[1] + block_f[6].num_features * 4 * 4  # the level's 1×C×4×4 output
    assert block_f[6].rng_state[1] == offset  # the next call draws a fresh mask


def test_dropout_counters_survive_a_checkpoint():
    """Resume exactness on backend triton: the fused layers' [seed, offset] go into the train state, so a network
    rebuilt from a checkpoint draws the masks the uninterrupted network draws next; unseeded layers are not seeded
    (and torch's generator not advanced) by saving."""
    from fastpix.models.fused import dropout_rng_states, load_dropout_rng_states

    torch.manual_seed(5)
    G = define_G(3, 3, 2, "unet_64", "batch", True, backend="triton").to(DEVICE)
    x = torch.randn(1, 3, 64, 64).to(DEVICE)
    G(x)
    before = torch.get_rng_state()
    states = dropout_rng_states(G)
    assert torch.equal(torch.get_rng_state(), before)
    assert list(states) == ["model.model.1.model.3.model.3.model.3.model.6"]  # unet_64's one dropout level
    resumed = define_G(3, 3, 2, "unet_64", "batch", True, backend="triton").to(DEVICE)
    resumed.load_state_dict(G.state_dict())
    load_dropout_rng_states(resumed, states)
    torch.manual_seed(6)  # a different torch RNG: the masks must come from the restored counters alone
    assert torch.equal(resumed(x), G(x))
    with pytest.raises(ValueError, match="not a fused module"):
        load_dropout_rng_states(define_G(3, 3, 2, "unet_64", "batch", True, backend="eager"), states)


def test_training_step_matches_eager():
    """One Pix2PixStep (G and D forward/backward, fused losses, both Adam steps) leaves the same weights."""
    G_e, G_f = pair(define_G, 3, 3, 4, "unet_32", "batch", False)
    D_e, D_f = pair(define_D, 6, 4, "basic")
    A = torch.rand(2, 3, 32, 32).to(DEVICE) * 2 - 1
    B = torch.rand(2, 3, 32, 32).to(DEVICE) * 2 - 1
    step_e = Pix2PixStep(G_e, D_e, device_type=torch.device(DEVICE).type)
    step_f = Pix2PixStep(G_f, D_f, device_type=torch.device(DEVICE).type)
    assert (step_e.backend, step_f.backend) == ("eager", "triton")
    losses_e, losses_f = step_e(A, B), step_f(A, B)
    for k in losses_e:
        assert_close(losses_f[k], losses_e[k], torch.float32, f"loss {k}", scale=10)
    assert_close(step_f.fake_B, step_e.fake_B, torch.float32, "fake_B", scale=10)
    # Adam's first step moves each weight by ≈ lr·sign(grad) = 2e-4: a wrong gradient would differ by that much.
    assert_same_state(G_e, G_f, "G after one step", scale=5)
    assert_same_state(D_e, D_f, "D after one step", scale=5)


def clean_env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU run, also on a machine with a GPU
    return env


def test_cli_trains_with_triton_on_cpu_through_the_interpreter(tiny_data, tmp_path):
    argv = [
        sys.executable,
        "-m",
        "fastpix",
        "train",
        "--backend",
        "triton",
        "--dataroot",
        tiny_data,
        "--name",
        "t",
        "--netG",
        "unet_32",
        "--ngf",
        "4",
        "--ndf",
        "4",
        "--load_size",
        "32",
        "--crop_size",
        "32",
        "--batch_size",
        "2",
        "--max_iters",
        "1",
        "--num_threads",
        "0",
        "--quiet",
    ]
    proc = subprocess.run(argv, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Triton's interpreter (TRITON_INTERPRET=1)" in proc.stdout
    assert os.path.isfile(tmp_path / "checkpoints" / "t" / "latest_net_G.safetensors")


def test_kernels_without_cuda_or_interpreter_fail_clearly():
    script = (
        "import torch\n"
        "from fastpix.kernels.batch_norm_act import batch_norm_act\n"
        "try:\n"
        "    batch_norm_act(torch.randn(2, 3, 4, 4), None, None, None, None, True)\n"
        "except ValueError as e:\n"
        "    print('launch:', e)\n"
        "from fastpix.models import use_triton_interpreter\n"
        "try:\n"
        "    use_triton_interpreter()\n"
        "except RuntimeError as e:\n"
        "    print('late:', e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert "launch: batch_norm_act: the Triton kernels need CUDA tensors, got one on cpu" in proc.stdout, proc.stderr
    assert "late: --backend triton on the CPU needs Triton's interpreter" in proc.stdout, proc.stderr
