"""R2S evaluation invariants on genuinely different members (random-score tickets of one
random network): natural accuracy is the members' mean, transfer from member j is scored
on every member, the worst case is a per-example minimum over attacks and passes, the
exact EOT gradient is the members' mean, and no evaluation touches BatchNorm state."""
import pytest
import torch
import torch.nn.functional as F

from attacks.randomized import eot_gradient
from tests.test_r2s import FLAGS, KS, digits, make_ticket, r2s_of
from trainers import r2s_eval
from trainers.evaluate import evaluate
from utils.config import parse_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def members():
    """(tickets, validation images, each ticket's predictions on them)."""
    x, _, xv, _ = digits(n_train=128, n_val=64)
    tickets = [(f"t_{k}.pth", k, make_ticket(k, x, score_seed=i)[1]) for i, k in enumerate(KS)]
    with torch.no_grad():
        preds = torch.stack([t[2](xv).argmax(1) for t in tickets])
    assert not torch.equal(preds[0], preds[1]) and not torch.equal(preds[1], preds[2])
    return tickets, xv, preds


def cfg(passes=1, epsilon=1):
    return parse_config(FLAGS + ["--eval_passes", str(passes), "--epsilon", str(epsilon), "--eot_steps", "2"])


def identity_transfer(monkeypatch):
    monkeypatch.setattr(r2s_eval, "TRANSFER", {k: lambda view, x, y, eps: x for k in r2s_eval.TRANSFER})


def test_natural_is_the_members_mean_and_transfer_from_j_is_scored_on_every_member(members, monkeypatch):
    tickets, xv, preds = members
    x = xv[:8]
    y = torch.cat([preds[0, :4], preds[2, 4:8]])  # labels some members get right and others not
    captured = []

    def spying(key, attack):
        def spy(view, xb, yb, eps):
            out = attack(view, xb, yb, eps)
            captured.append((key, view.index, out))
            return out
        return spy

    monkeypatch.setattr(r2s_eval, "TRANSFER", {k: spying(k, a) for k, a in r2s_eval.TRANSFER.items()})
    res = r2s_eval.evaluate_r2s(r2s_of(tickets), [(x, y)], CPU, cfg(), attacks={})

    def accuracy(model, inputs):
        with torch.no_grad():
            return 100.0 * float((model(inputs).argmax(1) == y).double().mean())

    natural = [accuracy(t[2], x) for t in tickets]
    assert len(set(natural)) > 1, "members must differ for the invariant to mean anything"
    assert [m["natural_acc1"] for m in res["members"]] == pytest.approx(natural)
    assert res["natural_acc1"]["mean"] == pytest.approx(sum(natural) / len(natural))
    assert sorted((k, j) for k, j, _ in captured) == sorted((k, j) for k in r2s_eval.TRANSFER for j in range(3))
    for key, j, x_adv in captured:
        on_members = [accuracy(t[2], x_adv) for t in tickets]
        assert res["attacks"][key][tickets[j][0]]["mean"] == pytest.approx(sum(on_members) / 3)
        if key == "transfer_paper":
            assert res["members"][j]["robust_acc1"] == pytest.approx(on_members[j])
    for key in r2s_eval.TRANSFER:
        per_source = [res["attacks"][key][t[0]]["mean"] for t in tickets]
        assert res["attacks"][f"{key}_min"]["mean"] == pytest.approx(min(per_source))


def two_fooled_examples(members):
    """Two images every member classifies as one class c (labels c), and an image no member calls c."""
    tickets, xv, preds = members
    agree = (preds == preds[0]).all(0)
    for c in preds[0][agree].unique():
        sure = torch.nonzero(agree & (preds[0] == c)).flatten()
        fool = torch.nonzero((preds != c).all(0)).flatten()
        if len(sure) >= 2 and len(fool):
            return xv[sure[:2]], torch.full((2,), int(c)), xv[fool[0]]
    raise AssertionError("fixture: no two agreed examples with a fooling image")


def test_worst_case_is_the_per_example_minimum_over_attacks_and_passes(members, monkeypatch):
    x, y, fool = two_fooled_examples(members)
    identity_transfer(monkeypatch)
    r2s = r2s_of(members[0])

    def fooling(index_of_call):
        calls = []

        def attack(model, xb, yb):
            out = xb.clone()
            out[index_of_call(len(calls))] = fool
            calls.append(1)
            return out
        return attack

    res = r2s_eval.evaluate_r2s(r2s, [(x, y)], CPU, cfg(), attacks={"A": fooling(lambda n: 0),
                                                                     "B": fooling(lambda n: 1)})
    assert res["natural_acc1"]["mean"] == 100.0
    assert res["attacks"]["A"]["mean"] == 50.0 and res["attacks"]["B"]["mean"] == 50.0
    assert res["worst_case"]["mean"] == 0.0 and res["worst_case"]["protocol"][-2:] == ["A", "B"]
    # one attack whose pass p fools only example p: 50% in each pass, 0% across passes
    res = r2s_eval.evaluate_r2s(r2s, [(x, y)], CPU, cfg(passes=2), attacks={"C": fooling(lambda n: n % 2)})
    assert res["attacks"]["C"]["per_pass"] == [50.0, 50.0]
    assert res["worst_case"]["within_pass"]["per_pass"] == [50.0, 50.0] and res["worst_case"]["mean"] == 0.0


def test_exact_eot_gradient_is_the_mean_of_member_gradients(members):
    tickets, xv, preds = members
    x, y = xv[:4], preds[0, :4]
    delta = torch.empty_like(x).uniform_(-4 / 255, 4 / 255, generator=torch.Generator().manual_seed(0))
    grads = []
    for _, _, model in tickets:
        d = delta.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(F.cross_entropy(model(x + d), y, reduction="sum"), d)[0])
    assert not torch.allclose(grads[0], grads[1], atol=1e-6), "members' gradients must differ"
    r2s = r2s_of(tickets)
    grad, exact = eot_gradient(r2s, x, delta, y, samples=3)
    assert exact and torch.allclose(grad, torch.stack(grads).mean(0), rtol=1e-4, atol=1e-7)
    assert not eot_gradient(r2s, x, delta, y, samples=2)[1], "more members than samples: sampled, not exact"


def test_evaluations_leave_member_batchnorm_state_and_the_mode_unchanged(members, monkeypatch):
    tickets, xv, preds = members
    x, y = xv[:4], preds[0, :4]
    r2s = r2s_of(tickets)
    before = {k: v.clone() for k, v in r2s.members.state_dict().items()}
    evaluate(r2s.member(0), [(x, y)], CPU)  # restores the view's previous mode afterwards
    assert not r2s.training and not r2s.net.training
    r2s.member(1).train()  # what torchattacks does after an attack on a model it found in train mode
    r2s.train()
    with torch.no_grad():
        r2s(x), r2s.member(2)(x)
    identity_transfer(monkeypatch)
    r2s_eval.evaluate_r2s(r2s, [(x, y)], CPU, cfg(), attacks={"switch_pgd20": r2s_eval.adaptive_attacks(
        cfg())["switch_pgd20"]})
    assert not any(m.training for m in r2s.modules()), "R2S and its shared network stay in eval mode"
    after = r2s.members.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
