"""AutoAttack through the reference implementation (pyautoattack): which settings each CLI flag
reaches (read back from the reference objects that ran), fp32, and the rand version on a
randomised model (every example, EOT needed, never the clean image)."""
import json
import os

import pytest
import torch

import main as main_entry
import test_trans
from tests.test_r2s import FLAGS, digits, save_ticket, shared_network, ticket_of
from attacks import autoattack as aa
from attacks import pgd as attacks_pgd
from attacks.autoattack import AutoAttackEval, autoattack, autoattack_rand
from attacks.pgd import pgd20
from evaluation.evaluate import EVAL_ATTACKS
from utils.config import parse_config
from utils.errors import cli_main

EPS = 1 / 255


@pytest.fixture(scope="module")
def trained():
    """A tiny naturally trained network (k = 1) and 16 validation digits."""
    _, network = shared_network()
    _, _, xv, yv = digits(n_train=1, n_val=16)
    return network, xv, yv


def accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def spy_builds(monkeypatch):
    """Every reference AutoAttack object built, as built."""
    built, real = [], aa.build_reference
    monkeypatch.setattr(aa, "build_reference", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    return built


def test_autoattack_is_registered_and_uses_the_reference():
    attack = EVAL_ATTACKS.get("autoattack")(parse_config(["--epsilon", "1", "--aa_steps", "5"]))
    assert isinstance(attack, AutoAttackEval) and attack.protocol() == {}
    ref = aa.build_reference(torch.nn.Identity(), 8 / 255)  # the reference's own defaults
    assert type(ref).__module__.startswith("pyautoattack")
    assert ref.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert (ref.apgd.n_iter, ref.apgd_targeted.n_target_classes, ref.square.n_queries) == (100, 9, 5000)
    rand = aa.build_reference(torch.nn.Identity(), 8 / 255, "rand")
    assert rand.attacks_to_run == ["apgd-ce", "apgd-dlr"] and rand.apgd.eot_iter == 20


def test_autoattack_not_weaker_than_pgd20(trained):
    model, x, y = trained
    natural = accuracy(model, x, y)
    torch.manual_seed(0)
    pgd_acc = accuracy(model, pgd20(model, x, y, EPS), y)
    assert natural > pgd_acc, "the model must have something for the attacks to take"
    rng = torch.get_rng_state()
    x_adv = autoattack(model, x, y, EPS, seed=0, steps=10, n_queries=100)
    assert torch.equal(torch.get_rng_state(), rng), "the reference's seeding must not leak into the caller"
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert accuracy(model, x_adv, y) <= pgd_acc
    assert all(p.grad is None for p in model.parameters()), "FAB's backward() must not fill parameter grads"


def _checkpoint(model, tmp_path):
    ckpt = tmp_path / "tiny_1.0.pth"
    torch.save({"state_dict": model.state_dict(), "arch": "cResNet18", "prune_rate": 1.0}, ckpt)
    return ckpt


def _evaluate_cli(ckpt, tmp_path, *flags):
    """``main.py --evaluate`` in-process through its CLI entry, 4 test digits, eps 8/255."""
    return cli_main(main_entry.main, FLAGS + ["--prune-rate", "1.0", "--evaluate", "--pretrained", str(ckpt),
                                              "--attack_type", "pgd", "--n_eval", "4", "--epsilon", "8",
                                              "--log-dir", str(tmp_path), "--name", "w", "--workers", "0", *flags])


def test_evaluate_cli_runs_the_reference_with_the_recorded_settings(trained, tmp_path, monkeypatch):
    """--aa_version plus --aa_steps 3: the objects that ran have those settings, and results.json
    records exactly what the objects say (not what the config asked for)."""
    model, _, _ = trained
    built, calls = spy_builds(monkeypatch), []
    real_attack = aa.autoattack

    def attack(net, x, y, epsilon, *args, **kwargs):
        calls.append(net.training)
        return real_attack(net, x, y, epsilon, *args, **kwargs)

    monkeypatch.setattr(aa, "autoattack", attack)
    out = _evaluate_cli(_checkpoint(model, tmp_path), tmp_path, "--eval_attack", "autoattack", "--aa_steps", "3",
                        "--aa_version", "plus")
    ran = [b for b in built if not isinstance(b.model, torch.nn.Identity)]
    assert len(ran) == 1 and calls == [False], "one reference run, on the model in eval mode"
    ref = ran[0]
    assert ref.attacks_to_run == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert ref.epsilon == pytest.approx(8 / 255) and ref.apgd.n_iter == 3 and ref.apgd.n_restarts == 5
    assert out["eval_attack"] == "autoattack" and out["robust_acc1"] < out["natural_acc1"]
    record = out["record"]  # -e writes its own record, in <run>/eval/
    assert os.path.dirname(record) == os.path.join(tmp_path, "no_config", "w", "prune_rate=1.0", "search",
                                                   "width_mult=0.125", "eval")
    with open(record) as fh:
        saved = json.load(fh)
    protocol = saved["eval_protocol"]
    assert saved["robust_acc1"] == out["robust_acc1"]
    assert protocol["implementation"].startswith("pyautoattack") and protocol["version"] == "plus"
    assert protocol["autoattack"]["settings"] == aa.settings_of(ref)["settings"]
    assert protocol["steps"] == ref.apgd.n_iter and protocol["restarts"] == ref.apgd.n_restarts


def _check_scored(calls, model_out):
    """Every scored example is in the 8/255-ball around its input and in [0, 1]; the reported
    robust accuracy is the accuracy on exactly those examples."""
    x = torch.cat([c[0] for c in calls])
    x_adv, y = torch.cat([c[1] for c in calls]), torch.cat([c[2] for c in calls])
    assert len(y) == 4
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x)
    return x_adv, y


def test_evaluate_cli_wires_pgd20(trained, tmp_path, monkeypatch):
    model, _, _ = trained
    calls, settings = [], []
    real = attacks_pgd.pgd

    def spy(net, x, y, epsilon, step, iters, **kwargs):
        settings.append((net.training, epsilon, step, iters, kwargs))
        x_adv = real(net, x, y, epsilon, step, iters, **kwargs)
        calls.append((x, x_adv, y))
        return x_adv

    monkeypatch.setattr(attacks_pgd, "pgd", spy)
    out = _evaluate_cli(_checkpoint(model, tmp_path), tmp_path)
    training, eps, step, iters, kwargs = settings[0]
    assert not training and eps == pytest.approx(8 / 255) and step == pytest.approx(2 / 255) and iters == 20
    assert kwargs["early_stop"] is True and kwargs.get("restarts", 1) == 1
    _check_scored(calls, out)


class _Recorder(torch.nn.Module):
    """A linear classifier over 20 classes that records whether autocast was on at each forward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * 4 * 4, 20)
        self.autocast = []

    def forward(self, x):
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return self.fc(x.flatten(1).float()).float()


def test_autoattack_runs_in_fp32_with_the_reference_targets(monkeypatch):
    """Under autocast AutoAttack still runs in fp32; APGD-T/FAB-T target the reference's 9 classes
    (not n_classes - 1 = 19); the record says so."""
    model, built = _Recorder().eval(), spy_builds(monkeypatch)
    x, y = torch.rand(3, 3, 4, 4), torch.tensor([0, 5, 19])
    attack = AutoAttackEval(8 / 255, seed=4, steps=1, n_queries=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attack(model, x, y)
        attack(model, x, y)
    assert model.autocast and not any(model.autocast)
    assert built[0].apgd_targeted.n_target_classes == 9 and built[0].fab.n_target_classes == 9
    ran = attack.protocol()
    assert ran["settings"]["apgd-t"]["n_target_classes"] == 9 and ran["seeds"] == [4, 5]
    assert [b.seed for b in built] == [4, 5], "each call its own seed"


def test_test_trans_evaluates_single_tickets_with_autoattack(tmp_path):
    x, network = shared_network()
    for i, k in enumerate((0.9, 0.95)):
        cfg, model = ticket_of(network, k, x, seed=i)
        save_ticket(tmp_path / f"net_{k}.pth", cfg, model, k)
    out = test_trans.main(FLAGS + ["--pretrained", str(tmp_path / "net_0.9.pth"), "--eval_attack", "autoattack",
                                   "--aa_steps", "5", "--aa_queries", "100", "--n_eval", "8", "--epsilon", "8",
                                   "--workers", "0",
                                   "--log-dir", str(tmp_path / "runs"), "--name", "aa"])
    paper = out["matrices"]["paper"]
    assert out["robust_attack"] == "autoattack" and len(paper) == 1 and len(paper[0]) == 2
    assert all(r < n for r, n in zip(out["robust_acc1"], out["natural_acc1"])), "the attack must do something"
    assert out["robust_acc1"][0] <= paper[0][0] + 1e-9  # AutoAttack no weaker than PGD-20 on the source
    protocol = out["robust_protocol"]
    assert protocol["version"] == "standard" and protocol["steps"] == 5 and len(protocol["seeds"]) == 2
    assert protocol["implementation"].startswith("pyautoattack") and protocol["amp"].startswith("none")
    assert protocol["aa_queries"] == 100 and protocol["autoattack"]["settings"]["square"]["n_queries"] == 100
    assert {"square n_queries 100 (reference 5000)", "apgd-ce n_iter 5 (reference 100)"} <= set(protocol["reduced"])
    assert out["robust_label"] == "autoattack (reduced)", "a reduced AutoAttack is labelled so"


D, SIGMA, MARGIN = 400, 5.0, 0.92  # input size, gradient noise, margin as a fraction of the reachable drop


class NoisyGradient(torch.nn.Module):
    """A randomised model (``random_forward``) whose prediction is deterministic but whose input
    gradient is buried in noise: each pass adds a zero-valued term with gradient SIGMA * N(0, 1)
    per pixel. Each input belongs to the nearest (L-inf) of the clean images ``anchors``
    [n, ...], whose margin it gets: class 0 wins while sum(x - anchor) > -margin, whatever
    the input's position in the batch (the reference's cascade attacks the surviving
    examples alone). The margin is MARGIN of the largest drop an eps-ball allows (D * eps),
    so only an attack that moves nearly every pixel the right way, i.e. averages the
    gradient over enough passes, fools it: the reference's APGD reaches about 0.55 of the
    drop with 1 pass, 0.85 with 5, 0.97-0.99 with 20."""

    random_forward = True

    def __init__(self, anchors, margins):
        super().__init__()
        self.anchors, self.margins = anchors.flatten(1), margins

    def forward(self, x):
        flat = x.flatten(1)
        own = (flat[:, None] - self.anchors[None]).abs().amax(2).argmin(1)  # the clean image it comes from
        noise = SIGMA * torch.randn_like(flat)
        z0 = self.margins[own] + (flat - self.anchors[own]).sum(1) + (noise * (flat - flat.detach())).sum(1)
        rest = torch.tensor([0.0] + [-float(k) for k in range(2, 10)]).expand(len(x), 9)
        return torch.cat([z0[:, None], rest], 1)


def noisy_pair(eps):
    """Two clean images (constant 0.3 and 0.7, far apart against eps), labels 0, and the model
    with margins MARGIN * D * eps (breakable with enough EOT) and 2 * D * eps (unbreakable)."""
    x = torch.stack([torch.full((1, 20, 20), 0.3), torch.full((1, 20, 20), 0.7)])
    return NoisyGradient(x, torch.tensor([MARGIN * D * eps, 2 * D * eps])), x, torch.zeros(2, dtype=torch.long)


def test_noisy_model_answers_by_input_not_by_position_in_the_batch():
    model, x, _ = noisy_pair(8 / 255)
    with torch.no_grad():
        both, swapped = model(x), model(x.flip(0))
        assert torch.equal(model(x[1:]), both[1:]) and torch.equal(swapped, both.flip(0))
        assert both[1, 0] - both[0, 0] == pytest.approx((2 - MARGIN) * D * 8 / 255)


def test_autoattack_rand_needs_its_eot_passes_and_attacks_every_example():
    """Example 0 is found only with the reference's 20 EOT passes (1 pass fails); example 1 (a
    margin no attack can cross) comes back as an attacked point, never the clean image (the
    reference's own rand cascade returns it clean: this test fails on it)."""
    eps = 8 / 255
    model, x, y = noisy_pair(eps)
    attack = AutoAttackEval(eps, seed=0)  # the reference's defaults: rand on a randomised model
    x_adv = attack(model, x, y)
    with torch.no_grad():
        assert model(x_adv).argmax(1).tolist()[0] != 0, "20 EOT passes must find example 0"
    assert not torch.equal(x_adv[1], x[1]), "an unbroken example is attacked, not returned clean"
    assert (x_adv - x).abs().max() <= eps + 1e-6
    ran = attack.protocol()
    assert ran["version"] == "rand" and ran["every_example"] and ran["attacks"] == ["apgd-ce", "apgd-dlr"]
    assert ran["settings"]["apgd-ce"]["eot_iter"] == 20 and ran["settings"]["apgd-dlr"]["n_iter"] == 100
    weak = autoattack_rand(model, x, y, eps, seed=0, eot_iter=1)
    with torch.no_grad():
        assert model(weak).argmax(1).tolist()[0] == 0, "the fixture: one EOT pass must not find example 0"
