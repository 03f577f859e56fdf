"""The output layer's sub-pixel form (fastpix/infer/subpixel.py) against the transposed conv it replaces, and the
compiled CPU network that holds it against the eager network (the compiled package itself: test_cpu_fast_path.py)."""

import pytest
import torch
import torch.nn as nn
from tiny_models import perturb_batchnorms

from fastpix.infer import compiled
from fastpix.infer.norm_modes import inference_network
from fastpix.infer.subpixel import SubPixelConvTranspose2d, subpixel_outputs
from fastpix.models import define_G

pytestmark = pytest.mark.usefixtures("one_thread")


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    "in_channels, out_channels, height, width, bias",
    [(128, 3, 13, 9, True), (8, 3, 5, 7, False), (6, 1, 1, 1, True), (5, 4, 2, 11, True)],
)
def test_the_subpixel_form_equals_the_transposed_conv(in_channels, out_channels, height, width, bias):
    torch.manual_seed(0)
    convt = nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=bias)
    with torch.no_grad():  # weights and bias of unit scale: a wrong tap or phase is far outside the tolerance
        convt.weight.normal_()
        if bias:
            convt.bias.normal_()
    x = torch.randn(2, in_channels, height, width)
    with torch.no_grad():
        want, got = convt(x), SubPixelConvTranspose2d(convt)(x)
    assert got.shape == want.shape == (2, out_channels, 2 * height, 2 * width)
    assert relative_error(got, want) < 1e-5


def test_other_transposed_convs_are_refused():
    with pytest.raises(ValueError, match="stride 2, padding 1"):
        SubPixelConvTranspose2d(nn.ConvTranspose2d(4, 3, 3, 2, 1))


def test_only_the_output_layer_of_a_unet_takes_the_subpixel_form():
    torch.manual_seed(0)
    G = define_G(3, 3, 8, "unet_32", "batch", True, backend="eager")
    net = subpixel_outputs(inference_network(G, "running"))
    assert isinstance(net.model.model[3], SubPixelConvTranspose2d)
    assert [m for m in net.modules() if isinstance(m, SubPixelConvTranspose2d)] == [net.model.model[3]]
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in net.modules()) == 4  # the inner up convs stay


@pytest.mark.parametrize("norm_mode", ["running", "instance"])
def test_the_prepared_network_equals_the_inference_network_in_fp32(norm_mode):
    torch.manual_seed(0)
    G = perturb_batchnorms(define_G(3, 3, 8, "unet_32", "batch", True, backend="eager"))
    net = inference_network(G, norm_mode)
    prepared, dtype = compiled.prepared_network(net, "fp32")
    assert dtype == torch.float32 and any(isinstance(m, SubPixelConvTranspose2d) for m in prepared.modules())
    x = torch.rand(2, 3, 32, 96) * 2 - 1
    with torch.no_grad():
        want = net(x)
        got = prepared(x.contiguous(memory_format=torch.channels_last))
    assert relative_error(got, want) < 1e-5
