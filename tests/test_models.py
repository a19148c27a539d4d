"""Every registered architecture builds, runs forward/backward and keeps k per layer."""
import math

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
    k_flag = [] if k is None else ["--prune-rate", str(k)]  # None: not given (the default 0.0)
    cfg = parse_config(["--arch", arch, "--conv_type", conv_type, *k_flag, "--width-mult", str(width), *extra])
    data = {"num_classes": 10, "in_channels": 3, "image_size": 32, **data}
    return models.build_model(cfg, **data)


def n_logits(arch, num_classes, image_size):
    """MobileNetV2 computes as the original: no downsampling, a 4x4 pool, every pixel's logits."""
    return num_classes * (image_size // 4) ** 2 if arch == "MobileNetV2" else num_classes


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
    assert logits.shape == (2, n_logits(arch, 10, 32))
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
    assert out.shape == (2, n_logits(arch, 7, image_size))


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
    model = build("Conv2", "DenseConv", k=None)
    assert not any(isinstance(m, MaskedConv) for m in model.modules())


def test_first_layer_dense_imagenet_resnet_is_a_torch_default_conv():
    """The original's ImageNet stem under --first-layer-dense: nn.Conv2d, torch's init (no --init)."""
    torch.manual_seed(3)
    model = build("ResNet18", extra=("--first-layer-dense", "--init", "signed_constant", "--scale-fan"))
    torch.manual_seed(3)
    plain = nn.Conv2d(3, model.conv1.out_channels, 7, stride=2, padding=3, bias=False)
    assert type(model.conv1) is DenseConv and model.conv1.bias is None
    assert torch.equal(model.conv1.weight, plain.weight)


@pytest.mark.parametrize("flag, fan_factor", [("--scale-fan", 1 - K), ("--scale-fan-kept", 1.0)])
def test_scale_fan_and_dense_layers(flag, fan_factor):
    """--scale-fan scales dense layers too (original, fan*(1-k)); --scale-fan-kept leaves them
    unscaled and scales masked ones by k."""
    model = build("cResNet18", extra=("--first-layer-dense", "--init", "signed_constant", flag))
    dense_std = math.sqrt(2.0) / math.sqrt(3 * 9 * fan_factor)
    torch.testing.assert_close(model.conv1.weight.abs(), torch.full_like(model.conv1.weight, dense_std))
    masked_factor = 1 - K if flag == "--scale-fan" else K
    w = model.layer1[0].conv1.weight
    expected = math.sqrt(2.0) / math.sqrt(w.shape[1] * 9 * masked_factor)
    torch.testing.assert_close(w.abs(), torch.full_like(w, expected))


def test_scale_fan_at_k_one_is_a_user_error():
    """fan * (1 - 1) = 0: the original divides by zero; we say why."""
    with pytest.raises(UserError, match="scale-fan-kept"):
        build("Conv2", k=1.0, extra=("--init", "signed_constant", "--scale-fan"))


def test_width_mult_truncates_like_the_original():
    """int(256 * 0.3) = 76 (round() would give 77), as the original's Conv4Wide."""
    model = build("Conv4Wide", width=0.3)
    assert [m.out_channels for m in model.linear if isinstance(m, nn.Conv2d)] == [76, 76, 10]
    assert model.convs[0].out_channels == 19 and model.convs[5].out_channels == 38


def test_mbv2_stride_fix_downsamples_with_the_same_parameters():
    torch.manual_seed(4)
    original = build("MobileNetV2", width=0.25)
    torch.manual_seed(4)
    fixed = build("MobileNetV2", width=0.25, extra=("--mbv2-stride-fix",))
    assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(), fixed.state_dict().values()))
    x = torch.rand(2, 3, 32, 32)
    assert original(x).shape == (2, 640) and fixed(x).shape == (2, 10)
    strides = [m.conv2.stride[0] for m in fixed.layers]
    assert strides.count(2) == 3 and all(m.conv2.stride[0] == 1 for m in original.layers)


@pytest.mark.parametrize("conv_type, stored", [("SubnetConv_filter", 1), ("SubnetConv_kernel", 2),
                                               ("SubnetConv_row", 3)])
def test_granular_scores_have_the_originals_shapes_and_load(conv_type, stored):
    """State dicts hold (out,), (out, in), (out, in, kh) as the original; such a checkpoint
    loads strictly and not strictly, and sets the masks (none is left random)."""
    from utils.checkpoint import load_model_state
    torch.manual_seed(5)
    source, target = build("Conv2", conv_type), build("Conv2", conv_type)
    state = source.state_dict()
    layer = source.convs[2]
    assert tuple(state["convs.2.scores"].shape) == tuple(layer.scores.shape[:stored])
    original = {k: v.clone() for k, v in state.items()}
    for strict in (True, False):
        assert load_model_state(target, original, strict=strict) == []
        assert torch.equal(target.convs[2].mask(), layer.mask())
        assert torch.equal(target.convs[2].scores, layer.scores)
    target.load_state_dict({**original, "convs.2.scores": layer.scores.detach().clone()})  # in-memory shape too
    assert torch.equal(target.convs[2].scores, layer.scores)


def test_sample_subnet_score_constant_draws_no_random_numbers():
    """--score-init-constant replaces the score draw (the original's order of random draws)."""
    from models.conv_type import SampleSubnetConv
    torch.manual_seed(6)
    SampleSubnetConv(3, 4, 3, score_init_constant=0.5)
    after_sample = torch.rand(3)
    torch.manual_seed(6)
    nn.Conv2d(3, 4, 3)
    assert torch.equal(after_sample, torch.rand(3))
