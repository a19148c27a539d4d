"""The fast search step (mask once per optimiser step, input-gradient-only
attacks, custom straight-through function) gives exactly what a straightforward
implementation gives: a layer that recomputes its top-k mask on every forward,
plain autograd through ``weight * (mask + |s| - |s|.detach())``, and an attack
whose ``loss.backward()`` also fills every parameter's gradient."""
import pytest
import torch
import torch.nn.functional as F

from models.conv_type import (MaskedConv, SubnetConv, SubnetConv_filter, SubnetConv_kernel,
                              SubnetConv_row, topk_mask)
from tests.helpers import tiny_model
from trainers.tasks import set_trainable
from attacks.pgd import pgd, project, random_start

EPS, STEP, ITERS = 8 / 255, 2 / 255, 7


class Reference:
    """Mixin: no caches at all; the mask is a fresh top-k on every forward."""

    def mask(self):
        with torch.no_grad():
            return topk_mask(self.scores, self.prune_rate)

    def masked_weight(self):
        a = self.scores.abs()
        return self.weight * (self.mask() + (a - a.detach()))


class RefSubnetConv(Reference, SubnetConv):
    pass


def make_reference(model):
    for m in model.modules():
        if type(m) is SubnetConv:
            m.__class__ = RefSubnetConv
    return model


def reference_pgd(model, x, y):
    """PGD as in the original: ``loss.backward()`` also computes parameter gradients."""
    delta = random_start(x, EPS).requires_grad_(True)
    for _ in range(ITERS):
        F.cross_entropy(model(x + delta), y).backward()
        with torch.no_grad():
            delta.copy_(project(x, delta + STEP * delta.grad.sign(), EPS))
        delta.grad.zero_()
    return (x + delta).detach()


def search_model(seed=0):
    model = tiny_model(seed=seed)
    set_trainable(model, weights=False, scores=True)
    return model


def search_step(model, opt, x, y, attack, seed):
    """Attack (train mode) + forward/backward + SGD step; returns logits, loss, grads, masks."""
    model.train()
    torch.manual_seed(seed)  # same random start in both implementations
    x_adv = attack(model, x, y)
    logits = model(x_adv)
    loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grads = [m.scores.grad.clone() for m in masked(model)]
    masks = [m.mask().clone() for m in masked(model)]
    opt.step()
    return x_adv, logits.detach(), loss.detach(), grads, masks


def masked(model):
    return [m for m in model.modules() if isinstance(m, MaskedConv)]


def sgd(model):
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9,
                           weight_decay=5e-4)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 16, 16, generator=g), torch.randint(0, 10, (6,), generator=g)


def test_search_steps_identical_to_reference(data):
    x, y = data
    fast, ref = search_model(), make_reference(search_model())
    opt_fast, opt_ref = sgd(fast), sgd(ref)
    attack = lambda m, x, y: pgd(m, x, y, EPS, STEP, ITERS)  # noqa: E731
    initial = [m.mask().clone() for m in masked(fast)]
    for step in range(3):  # later steps use masks recomputed after the optimiser step
        a = search_step(fast, opt_fast, x, y, attack, seed=step)
        b = search_step(ref, opt_ref, x, y, reference_pgd, seed=step)
        assert torch.equal(a[0], b[0]), f"step {step}: adversarial examples differ"
        assert torch.equal(a[1], b[1]), f"step {step}: logits differ"
        assert torch.equal(a[2], b[2]), f"step {step}: loss differs"
        for i, (ga, gb, ma, mb) in enumerate(zip(a[3], b[3], a[4], b[4])):
            assert torch.equal(ma, mb), f"step {step} layer {i}: masks differ"
            assert torch.equal(ga, gb), f"step {step} layer {i}: score gradients differ"
    assert any(not torch.equal(i, m.mask()) for i, m in zip(initial, masked(fast))), \
        "lr 0.5 should move some top-k sets (else later steps check nothing new)"
    for mf, mr in zip(masked(fast), masked(ref)):
        assert torch.equal(mf.scores, mr.scores)


def test_mask_computed_once_per_step_and_attack_computes_no_parameter_grads(data, monkeypatch):
    x, y = data
    model = search_model()
    opt = sgd(model)
    calls = {"mask": 0, "score_grad": 0}
    original = MaskedConv.compute_mask

    def counting(self):
        calls["mask"] += 1
        return original(self)

    monkeypatch.setattr(MaskedConv, "compute_mask", counting)
    for m in masked(model):
        m.scores.register_hook(lambda g: calls.__setitem__("score_grad", calls["score_grad"] + 1) or g)
    n = len(masked(model))
    for step in range(2):
        model.train()
        opt.zero_grad(set_to_none=True)
        calls.update(mask=0, score_grad=0)
        x_adv = pgd(model, x, y, EPS, STEP, ITERS)
        assert calls["mask"] == n, "one top-k selection per layer per optimiser step"
        assert calls["score_grad"] == 0, "attack backward passes must not compute score gradients"
        assert all(p.grad is None for p in model.parameters())
        assert all(p.requires_grad for m in masked(model) for p in [m.scores]), "attack restores flags"
        F.cross_entropy(model(x_adv), y).backward()
        assert calls["mask"] == n and calls["score_grad"] == n
        opt.step()


def test_cache_invalidated_by_step_and_load_state_dict(data):
    x, y = data
    model = search_model()
    layer = masked(model)[3]
    first = layer.mask()
    assert layer.mask() is first
    opt = sgd(model)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    after_step = layer.mask()
    assert after_step is not first
    assert torch.equal(after_step, topk_mask(layer.scores, layer.prune_rate))

    other = search_model(seed=1)
    with torch.no_grad():
        before = [m.masked_weight().clone() for m in masked(model)]
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        for m, o, old in zip(masked(model), masked(other), before):
            assert torch.equal(m.mask(), topk_mask(o.scores, o.prune_rate))
            assert torch.equal(m.masked_weight(), o.weight * m.mask())
            assert not torch.equal(m.masked_weight(), old)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), other.eval()(x))


def test_frozen_masked_weight_cache_follows_weight_updates(data):
    """ft_inherit: weights train, so the evaluation cache must not serve stale weights."""
    x, y = data
    model = tiny_model()
    set_trainable(model, weights=True, scores=False)
    layer = masked(model)[0]
    with torch.no_grad():
        stale = layer.masked_weight()
        assert layer.masked_weight() is stale
    opt = sgd(model)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    with torch.no_grad():
        assert torch.equal(layer.masked_weight(), layer.weight * layer.mask())
        assert not torch.equal(layer.masked_weight(), stale)


@pytest.mark.parametrize("cls", [SubnetConv, SubnetConv_filter, SubnetConv_kernel, SubnetConv_row])
def test_straight_through_function_matches_autograd(cls):
    torch.manual_seed(0)
    layer = cls(6, 12, kernel_size=3, padding=1, bias=False)
    layer.set_prune_rate(0.4)
    x = torch.randn(2, 6, 5, 5)
    g = torch.randn(2, 12, 5, 5)
    layer(x).backward(g)
    fast = layer.scores.grad.clone()
    layer.scores.grad = None
    ref = type("Ref", (Reference, cls), {})(6, 12, kernel_size=3, padding=1, bias=False)
    ref.load_state_dict(layer.state_dict())
    ref.set_prune_rate(0.4)
    ref(x).backward(g)
    assert torch.equal(fast, ref.scores.grad)
    assert ref.weight.grad is not None and layer.weight.grad is not None
    assert torch.equal(layer.weight.grad, ref.weight.grad)


def test_compiled_model_matches_eager(data):
    """torch.compile (dynamo with the eager backend: graph capture without code
    generation, which is what could go wrong) around masked layers whose caches
    stay eager: same attack, logits and score gradients, and eval still correct."""
    import torch._dynamo
    from trainers.loop import compile_model
    x, y = data
    eager, inner = search_model(), search_model()
    torch._dynamo.reset()
    compiled = compile_model(inner, backend="eager")
    attack = lambda m, x, y: pgd(m, x, y, EPS, STEP, 2)  # noqa: E731
    a = search_step(eager, sgd(eager), x, y, attack, seed=0)
    b = search_step(compiled, sgd(inner), x, y, attack, seed=0)
    for u, v in zip(a[:3], b[:3]):
        assert torch.equal(u, v)
    assert all(torch.equal(u, v) for u, v in zip(a[3], b[3]))
    assert all(torch.equal(e.scores, c.scores) for e, c in zip(masked(eager), masked(inner)))
    with torch.no_grad():
        assert torch.equal(eager.eval()(x), compiled.eval()(x))
    torch._dynamo.reset()
