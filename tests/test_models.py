"""Every registered architecture builds, runs forward/backward and keeps k per layer."""
import pytest
import torch
import torch.nn as nn

import models
from models.conv_type import DenseConv, MaskedConv
from models.registry import MODELS
from utils.config import parse_config
from utils.errors import UserError

K = 0.3
WIDTH = 0.125  # small enough that every net (WRN-34-10 and the 101s included) runs in well under a second
ARCHS = list(MODELS)


def build(arch, conv_type="SubnetConv", k=K, width=WIDTH, extra=(), **data):
    cfg = parse_config(["--arch", arch, "--conv_type", conv_type, "--prune-rate", str(k),
                        "--width-mult", str(width), *extra])
    data = {"num_classes": 10, "in_channels": 3, "image_size": 32, **data}
    return models.build_model(cfg, **data)


def convs_in_order(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_registry_has_every_spec_architecture():
    spec = {"cResNet18", "cResNet34", "cResNet50", "cResNet101", "PreActResNet18", "ResNet18", "ResNet34",
            "ResNet50", "ResNet101", "WideResNet50_2", "WideResNet101_2", "WideResNet32", "VGG11", "VGG16",
            "MobileNetV2", "Conv2", "Conv4", "Conv6", "Conv8", "Conv4Wide", "Conv6Wide", "FC"}
    assert spec <= set(ARCHS)


@pytest.mark.parametrize("conv_type", ["SubnetConv", "DenseConv"])
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward(arch, conv_type):
    torch.manual_seed(0)
    model = build(arch, conv_type)
    x = torch.rand(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    logits.sum().backward()

    masked = [m for m in model.modules() if isinstance(m, MaskedConv)]
    if conv_type == "DenseConv":
        assert not masked
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        return
    assert masked
    for layer in masked:
        assert layer.scores.grad is not None
        assert abs(layer.kept_fraction() - K) <= 1.0 / layer.weight.numel()


@pytest.mark.parametrize("arch", ARCHS)
def test_first_and_last_layer_flags(arch):
    """--first-layer-dense / --last-layer-dense reach exactly the stem and the classifier."""
    model = build(arch, extra=("--first-layer-dense", "--last-layer-dense"))
    convs = convs_in_order(model)
    assert type(convs[0]) is DenseConv
    assert type(convs[-1]) is DenseConv and convs[-1].out_channels == 10
    assert all(isinstance(m, MaskedConv) for m in convs[1:-1])


@pytest.mark.parametrize("arch, in_channels, image_size", [
    ("VGG16", 3, 8), ("VGG11", 1, 16), ("Conv8", 3, 8), ("Conv4", 1, 28), ("FC", 1, 28),
    ("ResNet18", 3, 16), ("MobileNetV2", 3, 16), ("WideResNet32", 1, 8),
])
def test_other_image_sizes(arch, in_channels, image_size):
    model = build(arch, num_classes=7, in_channels=in_channels, image_size=image_size)
    out = model(torch.rand(2, in_channels, image_size, image_size))
    assert out.shape == (2, 7)


def test_width_mult_scales_widths():
    small = sum(p.numel() for p in build("VGG11", width=0.25).parameters())
    large = sum(p.numel() for p in build("VGG11", width=0.5).parameters())
    assert large > 3 * small


def test_forward_normalizes_input():
    model = build("Conv2").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        model.set_normalization([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
        normed = model(x)
    assert not torch.allclose(plain, normed)


def test_unknown_arch_lists_valid_names():
    with pytest.raises(UserError) as info:
        build("ResNet19")
    msg = str(info.value)
    assert "ResNet19" in msg
    assert "cResNet18" in msg and "WideResNet32" in msg and "Conv4" in msg


@pytest.mark.parametrize("k", [0.0, -1.0])
def test_non_positive_prune_rate_rejected(k):
    with pytest.raises(UserError, match="kept"):
        build("Conv2", k=k)


def test_dense_model_ignores_prune_rate():
    model = build("Conv2", "DenseConv", k=0.0)
    assert not any(isinstance(m, MaskedConv) for m in model.modules())
