"""Masked layers: top-k rule, straight-through gradient, score variants,
mask caching, inits and BatchNorm types (SPEC section 4)."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.bn_type import LearnedBatchNorm, NonAffineBatchNorm
from models.builder import Builder
from models.conv_type import (FixedSubnetConv, SampleSubnetConv, SubnetConv, SubnetConv_filter,
                              SubnetConv_kernel, SubnetConv_row, topk_mask)
from models.init import INITS, InitSpec, init_weight

KS = [0.01, 0.1, 0.5, 1.0]


def expected_kept(n, k):
    """SPEC top-k rule: the int((1-k)*n) smallest |score| are dropped."""
    return n - int((1.0 - k) * n)


def assert_keeps_largest(scores, mask):
    """Every kept |score| is at least every dropped |score| (ties may fall either way)."""
    a = scores.detach().abs().expand_as(mask).flatten()
    m = mask.flatten().bool()
    if m.all() or not m.any():
        return
    assert a[m].min() >= a[~m].max()


def make_layer(cls=SubnetConv, k=0.5, in_ch=8, out_ch=16, ks=3):
    layer = cls(in_ch, out_ch, kernel_size=ks, padding=ks // 2, bias=False)
    layer.set_prune_rate(k)
    return layer


@pytest.mark.parametrize("k", KS)
def test_topk_mask_count_and_order(k):
    torch.manual_seed(0)
    scores = torch.randn(37, 11, 3, 3)
    mask = topk_mask(scores, k)
    assert mask.shape == scores.shape
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert int(mask.sum()) == expected_kept(scores.numel(), k)
    assert_keeps_largest(scores, mask)


@pytest.mark.parametrize("k", KS)
def test_subnetconv_keeps_top_k(k):
    torch.manual_seed(1)
    layer = make_layer(k=k)
    mask = layer.mask()
    n = layer.scores.numel()
    assert int(mask.sum()) == expected_kept(n, k)
    assert_keeps_largest(layer.scores, mask)
    assert layer.kept_fraction() == pytest.approx(expected_kept(n, k) / n)


def test_topk_mask_with_ties_keeps_exact_count():
    # many equal scores: the kthvalue fast path must fall back to an exact top-k
    scores = torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0, 0.5, 1.0, 1.0])
    mask = topk_mask(scores, 0.5)
    assert int(mask.sum()) == 4
    assert mask[4] == 1 and mask[5] == 0


def test_straight_through_gradient():
    """scores.grad == dL/d(masked weight) * weight * sign(scores); weights get none."""
    torch.manual_seed(2)
    layer = make_layer(k=0.3)
    layer.weight.requires_grad_(False)
    x = torch.randn(2, 8, 6, 6)
    g_out = torch.randn(2, 16, 6, 6)
    layer(x).backward(g_out)

    masked = (layer.weight * layer.mask()).detach().requires_grad_(True)
    F.conv2d(x, masked, padding=1).backward(g_out)
    expected = masked.grad * layer.weight * layer.scores.detach().sign()

    assert layer.weight.grad is None
    torch.testing.assert_close(layer.scores.grad, expected)
    # pruned weights still pass gradient to their scores (that is how they come back)
    dropped = layer.mask() == 0
    assert layer.scores.grad[dropped].abs().sum() > 0


@pytest.mark.parametrize("cls, shape_fn", [
    (SubnetConv_filter, lambda o, i, kh: (o, 1, 1, 1)),
    (SubnetConv_kernel, lambda o, i, kh: (o, i, 1, 1)),
    (SubnetConv_row, lambda o, i, kh: (o, i, kh, 1)),
])
@pytest.mark.parametrize("k", [0.1, 0.5])
def test_structured_variants(cls, shape_fn, k):
    torch.manual_seed(3)
    layer = make_layer(cls, k=k, in_ch=6, out_ch=20, ks=3)
    assert tuple(layer.scores.shape) == shape_fn(20, 6, 3)
    mask = layer.mask()
    assert int(mask.sum()) == expected_kept(layer.scores.numel(), k)
    assert_keeps_largest(layer.scores, mask)
    # the broadcast mask keeps the same fraction of the weight itself
    n = layer.scores.numel()
    assert layer.kept_fraction() == pytest.approx(expected_kept(n, k) / n)
    out = layer(torch.randn(2, 6, 5, 5))
    assert out.shape == (2, 20, 5, 5)


def test_mask_cache_reused_and_refreshed_after_step():
    torch.manual_seed(4)
    layer = make_layer(k=0.2)
    layer.weight.requires_grad_(False)
    first = layer.mask()
    assert layer.mask() is first, "unchanged scores must reuse the cached mask"

    opt = torch.optim.SGD([layer.scores], lr=10.0)
    layer(torch.randn(2, 8, 5, 5)).pow(2).sum().backward()
    opt.step()

    second = layer.mask()
    assert second is not first, "an optimiser step must invalidate the cached mask"
    torch.testing.assert_close(second, topk_mask(layer.scores, 0.2))
    assert not torch.equal(second, first), "a large step should move the top-k set"
    assert layer.mask() is second


def test_mask_refreshed_after_prune_rate_change():
    layer = make_layer(k=0.5)
    first = layer.mask()
    layer.set_prune_rate(0.1)
    assert int(layer.mask().sum()) == expected_kept(layer.scores.numel(), 0.1)
    assert layer.mask() is not first


def test_eval_no_grad_uses_masked_weight():
    torch.manual_seed(5)
    layer = make_layer(k=0.1).eval()
    with torch.no_grad():
        w = layer.masked_weight()
        torch.testing.assert_close(w, layer.weight * layer.mask())
        x = torch.randn(1, 8, 4, 4)
        torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight * layer.mask(), padding=1))


def test_sample_subnet_conv_scores_get_gradient():
    torch.manual_seed(6)
    layer = make_layer(SampleSubnetConv)
    layer.weight.requires_grad_(False)
    layer(torch.randn(2, 8, 5, 5)).sum().backward()
    assert layer.scores.grad is not None
    assert layer.scores.grad.abs().sum() > 0


def test_sample_subnet_score_init_constant():
    layer = Builder(conv_type="SampleSubnetConv", score_init_constant=0.7).conv3x3(4, 4)
    assert torch.all(layer.scores == 0.7)


def test_fixed_subnet_conv_follows_the_original():
    """Before a load: conv with weight * raw scores (trainable). After any load: the
    scores are a frozen 0/1 mask zeroing the int(k*n) smallest |score|; a reload keeps it."""
    torch.manual_seed(9)
    layer = make_layer(FixedSubnetConv, k=0.4)
    x = torch.randn(2, 8, 5, 5)
    assert layer.scores.requires_grad
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight * layer.scores, padding=1))
    raw = layer.scores.detach().abs().flatten().clone()
    layer.load_state_dict(layer.state_dict())
    n, dropped = raw.numel(), int(0.4 * raw.numel())
    scores = layer.scores.detach().flatten()
    assert not layer.scores.requires_grad
    assert set(scores.unique().tolist()) == {0.0, 1.0} and int((scores == 0).sum()) == dropped
    assert raw[scores == 1].min() >= raw[scores == 0].max()  # the smallest |score| are zeroed
    assert layer.kept_fraction() == pytest.approx((n - dropped) / n)
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight * layer.scores, padding=1))
    before = layer.scores.clone()
    layer.load_state_dict(layer.state_dict())
    assert torch.equal(layer.scores, before)


@pytest.mark.parametrize("name", list(INITS))
def test_every_init_runs(name):
    w = torch.empty(16, 8, 3, 3)
    init_weight(name, w, InitSpec())
    assert torch.isfinite(w).all()
    assert w.abs().sum() > 0


def test_signed_constant_magnitude():
    torch.manual_seed(7)
    w = torch.empty(16, 8, 3, 3).normal_()
    init_weight("signed_constant", w, InitSpec(mode="fan_in", nonlinearity="relu"))
    expected = math.sqrt(2.0) / math.sqrt(8 * 9)
    torch.testing.assert_close(w.abs(), torch.full_like(w, expected))
    assert (w > 0).any() and (w < 0).any()


def plain_and_scaled(name, **spec):
    """A 16x8x3x3 weight initialised by ``name`` without and with the fan-scaling ``spec``, same draws."""
    plain, scaled = torch.empty(16, 8, 3, 3), torch.empty(16, 8, 3, 3)
    torch.manual_seed(8)
    init_weight(name, plain.normal_(), InitSpec("fan_in", "relu"))
    torch.manual_seed(8)
    init_weight(name, scaled.normal_(), InitSpec("fan_in", "relu", **spec))
    return plain, scaled


@pytest.mark.parametrize("name, scaled", [("signed_constant", True), ("unsigned_constant", True),
                                           ("kaiming_normal", True), ("kaiming_uniform", False)])
def test_scale_fan_is_the_originals_fan_times_one_minus_k(name, scaled):
    """--scale-fan: fan * (1 - k) in the inits the original scales; its kaiming_uniform ignores it."""
    k, fan = 0.25, 8 * 9
    plain, scaled_w = plain_and_scaled(name, scale_fan=True, prune_rate=k)
    ratio = math.sqrt(fan / (fan * (1 - k))) if scaled else 1.0
    torch.testing.assert_close(scaled_w, plain * ratio)


@pytest.mark.parametrize("name", ["signed_constant", "kaiming_uniform"])
def test_scale_fan_kept_is_fan_times_k(name):
    """--scale-fan-kept (opt-in correction): fan * k, kaiming_uniform included."""
    k, fan = 0.25, 8 * 9
    plain, scaled_w = plain_and_scaled(name, prune_rate=k, scale_fan_kept=True)
    torch.testing.assert_close(scaled_w, plain * math.sqrt(fan / (fan * k)))


def test_builder_applies_init_and_prune_rate():
    b = Builder(init="unsigned_constant", init_spec=InitSpec("fan_out", "relu"), prune_rate=0.3)
    layer = b.conv3x3(4, 6)
    torch.testing.assert_close(layer.weight, torch.full_like(layer.weight, math.sqrt(2.0 / (6 * 9))))
    assert layer.prune_rate == 0.3


def test_batchnorm_types():
    nab = NonAffineBatchNorm(8)
    assert nab.weight is None and nab.bias is None
    assert list(nab.parameters()) == []
    lbn = LearnedBatchNorm(8)
    assert lbn.weight.shape == (8,) and lbn.bias.shape == (8,)
    assert lbn.weight.requires_grad
