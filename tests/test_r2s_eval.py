"""R2S evaluation invariants on genuinely different members (random-score tickets of one
random network): natural accuracy is the members' mean, transfer from member j is scored
on every member, the worst case is a per-example minimum over attacks and passes, the
exact EOT gradient is the members' mean, and no evaluation touches BatchNorm state."""
import pytest
import torch
import torch.nn.functional as F

from attacks.randomized import eot_gradient
from tests.test_r2s import FLAGS, KS, digits, make_ticket, r2s_of
from evaluation import r2s_eval
from evaluation.evaluate import evaluate
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


def cfg(passes=1, epsilon=1, *extra):
    return parse_config(FLAGS + ["--eval_passes", str(passes), "--epsilon", str(epsilon), "--eot_steps", "2",
                                 *extra])


def identity_transfer(monkeypatch):
    monkeypatch.setattr(r2s_eval, "TRANSFER_EXAMPLES", lambda view, x, y, eps, **_: (x, x))


def test_natural_is_the_members_mean_and_transfer_from_j_is_scored_on_every_member(members, monkeypatch):
    tickets, xv, preds = members
    x = xv[:8]
    y = torch.cat([preds[0, :4], preds[2, 4:8]])  # labels some members get right and others not
    captured = []
    real = r2s_eval.TRANSFER_EXAMPLES

    def spy(view, xb, yb, eps, **kw):
        out = real(view, xb, yb, eps, **kw)
        captured.append((view.index, out))
        return out

    monkeypatch.setattr(r2s_eval, "TRANSFER_EXAMPLES", spy)
    res = r2s_eval.evaluate_r2s(r2s_of(tickets), [(x, y)], CPU, cfg(), attacks={})

    def correct(inputs):
        with torch.no_grad():
            return torch.stack([(t[2](inputs).argmax(1) == y).double() for t in tickets])

    natural = (100 * correct(x).mean(1)).tolist()
    assert len(set(natural)) > 1, "members must differ for the invariant to mean anything"
    assert [m["natural_acc1"] for m in res["members"]] == pytest.approx(natural)
    assert res["natural_acc1"]["mean"] == pytest.approx(sum(natural) / len(natural))
    assert sorted(j for j, _ in captured) == [0, 1, 2]
    for j, (paper, highest) in captured:
        on_paper, on_highest = correct(paper).mean(0), correct(highest).mean(0)
        name = tickets[j][0]
        assert res["attacks"]["transfer_paper"][name]["mean"] == pytest.approx(100 * float(on_paper.mean()))
        assert res["attacks"]["transfer_strong"][name]["mean"] == pytest.approx(
            100 * float(torch.minimum(on_paper, on_highest).mean()))
        assert res["attacks"]["transfer_strong"][name]["mean"] <= res["attacks"]["transfer_paper"][name]["mean"]
        assert res["members"][j]["robust_acc1"] == pytest.approx(100 * float(correct(paper)[j].mean()))
    for key in r2s_eval.TRANSFER:
        per_source = [res["attacks"][key][t[0]]["mean"] for t in tickets]
        assert res["attacks"][f"{key}_min"]["mean"] == pytest.approx(min(per_source))


def two_fooled_examples(members, n=2):
    """``n`` images every member classifies as one class c (labels c; the first such image
    repeated), and an image no member calls c."""
    tickets, xv, preds = members
    agree = (preds == preds[0]).all(0)
    for c in preds[0][agree].unique():
        sure = torch.nonzero(agree & (preds[0] == c)).flatten()
        fool = torch.nonzero((preds != c).all(0)).flatten()
        if len(sure) and len(fool):
            return xv[sure[:1]].repeat(n, 1, 1, 1), torch.full((n,), int(c)), xv[fool[0]]
    raise AssertionError("fixture: no agreed example with a fooling image")


def planted(fool, index):
    """A fake attack that fools exactly example ``index`` (by replacing it with ``fool``)."""
    def attack(model, x, y, *args, **kwargs):
        out = x.clone()
        out[index] = fool
        return out
    return attack


ADAPTIVE = ["switch_pgd20", "eot_pgd", "ensemble_pgd", "arc", "autoattack_rand"]


def test_worst_case_includes_every_attack(members, monkeypatch):
    """Each attack alone (transfer paper, transfer highest-loss, and every adaptive attack of
    ``adaptive_attacks`` with --eval_attack autoattack) fools one planted example the others
    miss: the worst case is 0 only if it takes every one of them."""
    n = 2 + len(ADAPTIVE)
    x, y, fool = two_fooled_examples(members, n)
    monkeypatch.setattr(r2s_eval, "TRANSFER_EXAMPLES",
                        lambda view, xb, yb, eps, **_: (planted(fool, 0)(view, xb, yb), planted(fool, 1)(view, xb, yb)))
    fakes = {name: planted(fool, 2 + i) for i, name in enumerate(ADAPTIVE)}

    class Registry:
        def get(self, name):
            return fakes[name]

    monkeypatch.setattr(r2s_eval, "RANDOMIZED_ATTACKS", Registry())
    monkeypatch.setattr(r2s_eval, "AutoAttackEval", lambda *a, **k: fakes["autoattack_rand"])
    res = r2s_eval.evaluate_r2s(r2s_of(members[0]), [(x, y)], CPU, cfg(1, 1, "--eval_attack", "autoattack"))
    attacks = res["attacks"]
    assert list(attacks)[4:] == ADAPTIVE, "every adaptive attack must run"
    assert res["natural_acc1"]["mean"] == 100.0
    assert all(attacks[name]["mean"] == pytest.approx(100 * (n - 1) / n) for name in ADAPTIVE)
    assert attacks["transfer_paper_min"]["mean"] == pytest.approx(100 * (n - 1) / n)
    assert attacks["transfer_strong_min"]["mean"] == pytest.approx(100 * (n - 2) / n)
    assert res["worst_case"]["mean"] == 0.0, "the worst case must include every attack and transfer"
    assert res["worst_case"]["protocol"] == ["natural", "transfer_paper", "transfer_strong", *ADAPTIVE]


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
    r2s.member(1).train()  # what an attack library may do after attacking a model it found in train mode
    r2s.train()
    with torch.no_grad():
        r2s(x), r2s.member(2)(x)
    identity_transfer(monkeypatch)
    r2s_eval.evaluate_r2s(r2s, [(x, y)], CPU, cfg(), attacks={"switch_pgd20": r2s_eval.adaptive_attacks(
        cfg())["switch_pgd20"]})
    assert not any(m.training for m in r2s.modules()), "R2S and its shared network stay in eval mode"
    after = r2s.members.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
