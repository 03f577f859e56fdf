"""Model parity with the reference: keys, shapes, parameter counts, output shapes, and a numeric forward."""

import pytest
import torch
import torch.nn.functional as F

from fastpix.models import define_D, define_G

PARAM_COUNTS = [  # the reference's define_G (docs/reference-compat.md, "Checkpoints")
    ("unet_256", "batch", 54_413_955),
    ("unet_256", "instance", 54_409_603),
    ("unet_128", "batch", 41_828_995),
    ("unet_128", "instance", 41_825_667),
    ("resnet_9blocks", "batch", 11_383_427),
    ("resnet_6blocks", "batch", 7_841_411),
]


def n_params(net):
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("netG,norm,expected", PARAM_COUNTS)
def test_generator_parameter_counts(netG, norm, expected):
    assert n_params(define_G(3, 3, 64, netG, norm, True, backend="eager")) == expected


def test_discriminator_parameter_count_and_output():
    D = define_D(6, 64, "basic", backend="eager")
    assert n_params(D) == 2_768_705
    assert D(torch.randn(1, 6, 256, 256)).shape == (1, 1, 30, 30)


def test_unet_256_key_layout():
    sd = define_G(3, 3, 64, "unet_256", "batch", True, backend="eager").state_dict()
    assert len(sd) == 82
    assert sd["model.model.0.weight"].shape == (64, 3, 4, 4)
    assert "model.model.0.bias" not in sd  # no bias under BatchNorm, also where no norm follows
    assert sd["model.model.3.weight"].shape == (128, 3, 4, 4) and sd["model.model.3.bias"].shape == (3,)
    # level 2: prefix model.model.1.model.; 1 down conv, 2 down norm, 5 ConvT [in, out, 4, 4], 6 up norm
    assert sd["model.model.1.model.1.weight"].shape == (128, 64, 4, 4)
    assert sd["model.model.1.model.2.running_var"].shape == (128,)
    assert sd["model.model.1.model.5.weight"].shape == (256, 64, 4, 4)
    assert sd["model.model.1.model.6.num_batches_tracked"].dtype == torch.int64
    # level 8 (innermost): model.model.1 + model.3 × 6 + model.; 1 down conv, 3 ConvT, 4 up norm
    inner = "model.model.1." + "model.3." * 6 + "model."
    assert sd[inner + "1.weight"].shape == (512, 512, 4, 4)
    assert sd[inner + "3.weight"].shape == (512, 512, 4, 4)
    assert sd[inner + "4.weight"].shape == (512,)
    assert not any(k.startswith(inner + "2.") for k in sd)


def test_instance_norm_adds_conv_biases_and_no_norm_keys():
    sd = define_G(3, 3, 64, "unet_256", "instance", True, backend="eager").state_dict()
    assert sd["model.model.0.bias"].shape == (64,)
    assert not any("running_mean" in k for k in sd)


def test_discriminator_keys():
    basic = define_D(6, 64, "basic", backend="eager").state_dict()
    assert set(basic) == {
        "model.0.weight",
        "model.0.bias",
        "model.2.weight",
        "model.5.weight",
        "model.8.weight",
        "model.11.weight",
        "model.11.bias",
    } | {
        f"model.{i}.{s}"
        for i in (3, 6, 9)
        for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }
    pixel = define_D(6, 64, "pixel", backend="eager").state_dict()
    assert set(pixel) == {
        "net.0.weight",
        "net.0.bias",
        "net.2.weight",
        "net.3.weight",
        "net.3.bias",
        "net.3.running_mean",
        "net.3.running_var",
        "net.3.num_batches_tracked",
        "net.5.weight",
    }
    assert define_D(6, 64, "pixel", backend="eager")(torch.randn(2, 6, 9, 7)).shape == (2, 1, 9, 7)


@pytest.mark.parametrize("n_layers,out", [(1, 126), (2, 62), (3, 30), (4, 14), (5, 6)])
def test_n_layers_discriminator_output(n_layers, out):
    D = define_D(6, 8, "n_layers", n_layers_D=n_layers, backend="eager")
    assert D(torch.randn(1, 6, 256, 256)).shape == (1, 1, out, out)


@pytest.mark.parametrize("netG,size", [("unet_32", 32), ("unet_64", 64), ("unet_128", 128), ("resnet_6blocks", 36)])
def test_generator_output_shapes(netG, size):
    G = define_G(1, 3, 8, netG, "batch", True, backend="eager")
    assert G(torch.randn(2, 1, size, size)).shape == (2, 3, size, size)


def test_unet_rejects_sizes_that_are_not_multiples():
    G = define_G(3, 3, 8, "unet_32", backend="eager")
    with pytest.raises(ValueError, match="multiples of 32"):
        G(torch.randn(1, 3, 48, 40))


def test_unknown_names_raise_clear_errors():
    with pytest.raises(ValueError, match="--netG"):
        define_G(3, 3, 8, "unet_100", backend="eager")
    with pytest.raises(ValueError, match="--netD"):
        define_D(6, 8, "huge", backend="eager")
    with pytest.raises(ValueError, match="--norm"):
        define_G(3, 3, 8, "unet_32", norm="group", backend="eager")


def test_init_normal_statistics():
    G = define_G(3, 3, 64, "unet_256", "batch", True, "normal", 0.02, backend="eager")
    sd = G.state_dict()
    w = sd["model.model.1.model.3.model.1.weight"]
    assert abs(w.std().item() - 0.02) < 1e-3 and abs(w.mean().item()) < 1e-3
    bn = sd["model.model.1.model.2.weight"]
    assert abs(bn.mean().item() - 1.0) < 0.01 and sd["model.model.1.model.2.bias"].abs().max() == 0
    assert sd["model.model.3.bias"].abs().max() == 0


def unet_forward_reference(sd, x, num_downs):
    """The reference's U-Net computed directly from a state dict (train-mode BatchNorm, dropout off)."""

    def bn(t, prefix):
        return F.batch_norm(t, None, None, sd[prefix + "weight"], sd[prefix + "bias"], training=True, eps=1e-5)

    def level_cat(t, k):  # k = 1 outermost ... num_downs innermost; inner levels return cat([input, output])
        prefix = "model.model." if k == 1 else "model.model.1." + "model.3." * (k - 2) + "model."
        if k == 1:
            d = F.conv2d(t, sd[prefix + "0.weight"], stride=2, padding=1)
            u = F.conv_transpose2d(
                F.relu(level_cat(d, 2)), sd[prefix + "3.weight"], sd[prefix + "3.bias"], stride=2, padding=1
            )
            return torch.tanh(u)
        d = F.conv2d(F.leaky_relu(t, 0.2), sd[prefix + "1.weight"], stride=2, padding=1)
        if k == num_downs:
            u = bn(F.conv_transpose2d(F.relu(d), sd[prefix + "3.weight"], stride=2, padding=1), prefix + "4.")
        else:
            u = F.conv_transpose2d(
                F.relu(level_cat(bn(d, prefix + "2."), k + 1)), sd[prefix + "5.weight"], stride=2, padding=1
            )
            u = bn(u, prefix + "6.")
        return torch.cat([t, u], 1)

    return level_cat(x, 1)


def test_unet_forward_matches_direct_computation():
    G = define_G(3, 2, 4, "unet_32", "batch", use_dropout=True, backend="eager").train()
    sd = {k: v.clone() for k, v in G.state_dict().items()}
    for k in sd:  # move BatchNorm's affine off (1, 0) so that it matters
        if k.endswith(".bias") or (k.endswith(".weight") and sd[k].dim() == 1):
            sd[k] = torch.randn_like(sd[k]) * 0.1 + (1.0 if k.endswith(".weight") else 0.0)
    G.load_state_dict(sd)
    x = torch.randn(3, 3, 32, 32)
    for m in G.modules():  # dropout off, batch statistics on: the reference's layers otherwise
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    expected = unet_forward_reference(sd, x, 5)
    torch.testing.assert_close(G(x), expected, rtol=1e-5, atol=1e-5)


def test_reference_state_dict_round_trip(tmp_path):
    """A reference-style torch.save(state_dict) loads strictly and gives the same eval output."""
    G = define_G(3, 3, 8, "unet_64", "batch", True, backend="eager")
    path = tmp_path / "latest_net_G.pth"
    torch.save(G.state_dict(), path)
    H = define_G(3, 3, 8, "unet_64", "batch", True, backend="eager")
    H.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(G.eval()(x), H.eval()(x))
