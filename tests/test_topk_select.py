"""The top-k selection behind every mask: exact count, one tie rule on every path,
and the masked-weight cache shared by the attack steps and the training forward."""
import pytest
import torch
import torch.nn.functional as F

from models.conv_type import SubnetConv, _partition_select, _sort_select, topk_mask


def drop_of(n, k):
    return int((1.0 - k) * n)


def lowest_index_rule(scores, k):
    """Reference: sort by (|score| descending, flat index ascending), keep the first n - drop."""
    a = scores.detach().abs().flatten().double()
    n = a.numel()
    order = sorted(range(n), key=lambda i: (-a[i].item(), i))
    keep = torch.zeros(n, dtype=scores.dtype)
    keep[order[: n - drop_of(n, k)]] = 1
    return keep.view_as(scores)


@pytest.mark.parametrize("k", [0.05, 0.3, 0.5, 0.9])
def test_ties_keep_lowest_indices_on_both_paths(k):
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        # integers in [-6, 6]: almost every threshold is a tie, +x and -x tie on |score|
        scores = torch.randint(-6, 7, (7, 5, 3, 3), generator=g).float()
        expected = lowest_index_rule(scores, k)
        flat, drop = scores.abs().flatten(), drop_of(scores.numel(), k)
        assert torch.equal(topk_mask(scores, k), expected)
        assert torch.equal(_partition_select(scores.flatten(), drop).view_as(scores).to(scores.dtype), expected)
        assert torch.equal(_sort_select(flat, drop).view_as(scores).to(scores.dtype), expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes_same_rule(dtype):
    g = torch.Generator().manual_seed(1)
    scores = (torch.randint(-20, 21, (400,), generator=g).float() / 4).to(dtype)
    mask = topk_mask(scores, 0.3)
    assert mask.dtype == dtype
    assert torch.equal(mask, lowest_index_rule(scores, 0.3))


def test_no_ties_equals_strict_threshold():
    torch.manual_seed(2)
    scores = torch.randn(64, 32, 3, 3)
    for k in (0.01, 0.1, 0.7):
        drop = drop_of(scores.numel(), k)
        threshold = scores.abs().flatten().kthvalue(drop).values
        assert torch.equal(topk_mask(scores, k), (scores.abs() > threshold).float())


def test_training_forward_reuses_the_attack_product():
    """The STE's value is the cached ``weight * mask`` the attack steps used (no second
    copy); the cache never joins the graph; the gradient still reaches the scores."""
    torch.manual_seed(3)
    layer = SubnetConv(4, 6, kernel_size=3, padding=1, bias=False)
    layer.set_prune_rate(0.4)
    layer.weight.requires_grad_(False)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        product = layer.masked_weight()  # what an attack step computes
    w = layer.masked_weight()
    assert w.requires_grad and w.data_ptr() == product.data_ptr()
    assert not product.requires_grad and product.grad_fn is None
    assert torch.equal(w, layer.weight * layer.mask())
    F.conv2d(x, w, padding=1).sum().backward()
    assert layer.scores.grad is not None and layer.scores.grad.abs().sum() > 0
    torch.optim.SGD([layer.scores], lr=10.0).step()
    with torch.no_grad():
        assert layer.masked_weight() is not product, "a score step must refresh the product"
        assert torch.equal(layer.masked_weight(), layer.weight * topk_mask(layer.scores, 0.4))
