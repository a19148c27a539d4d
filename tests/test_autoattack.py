"""AutoAttack (torchattacks) as an evaluation attack, and which settings each CLI flag reaches."""
import json
import os

import pytest
import torch

import main as main_entry
import test_trans
from tests.test_r2s import FLAGS, digits, save_ticket, shared_network, ticket_of
from attacks import autoattack as aa
from attacks import pgd as attacks_pgd
from attacks.autoattack import autoattack
from attacks.pgd import pgd20
from trainers.evaluate import EVAL_ATTACKS
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


def test_autoattack_is_registered_as_an_evaluation_attack():
    attack = EVAL_ATTACKS.get("autoattack")(parse_config(["--epsilon", "1", "--aa_steps", "5"]))
    assert callable(attack)


def test_autoattack_not_weaker_than_pgd20(trained):
    model, x, y = trained
    natural = accuracy(model, x, y)
    torch.manual_seed(0)
    pgd_acc = accuracy(model, pgd20(model, x, y, EPS), y)
    assert natural > pgd_acc, "the model must have something for the attacks to take"
    rng = torch.get_rng_state()
    x_adv = autoattack(model, x, y, EPS, seed=0, steps=10, n_queries=100)
    assert torch.equal(torch.get_rng_state(), rng), "torchattacks' seeding must not leak into the caller"
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


def _check_scored(calls, model_out):
    """Every scored example is in the 8/255-ball around its input and in [0, 1]; the reported
    robust accuracy is the accuracy on exactly those examples."""
    x = torch.cat([c[0] for c in calls])
    x_adv, y = torch.cat([c[1] for c in calls]), torch.cat([c[2] for c in calls])
    assert len(y) == 4
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x)
    return x_adv, y


def test_evaluate_cli_wires_autoattack_flags_to_the_attack(trained, tmp_path, monkeypatch):
    model, _, _ = trained
    built, calls = [], []
    real_build, real_attack = aa.build_autoattack, aa.autoattack

    def build(net, epsilon, n_classes, *args, **kwargs):
        attack = real_build(net, epsilon, n_classes, *args, **kwargs)
        built.append((net.training, epsilon, attack))
        return attack

    def attack(net, x, y, epsilon, **kwargs):
        x_adv = real_attack(net, x, y, epsilon, **kwargs)
        calls.append((x, x_adv, y, net))
        return x_adv

    monkeypatch.setattr(aa, "build_autoattack", build)
    monkeypatch.setattr(aa, "autoattack", attack)
    out = _evaluate_cli(_checkpoint(model, tmp_path), tmp_path, "--eval_attack", "autoattack", "--aa_steps", "7")
    assert len(built) == 1 and built[0][0] is False, "AutoAttack must see the model in eval mode"
    assert built[0][1] == pytest.approx(8 / 255)
    members = built[0][2]._autoattack.attacks
    assert [type(m).__name__ for m in members] == ["APGD", "APGDT", "FAB", "Square"]
    assert [m.steps for m in members[:3]] == [7, 7, 7]
    assert members[1].n_target_classes == 9 and members[2].n_target_classes == 9
    x_adv, y = _check_scored(calls, out)
    net = calls[0][3]
    with torch.no_grad():
        assert out["robust_acc1"] == pytest.approx(100.0 * float((net(x_adv).argmax(1) == y).float().mean()))
    assert out["eval_attack"] == "autoattack" and out["robust_acc1"] < out["natural_acc1"]
    record = out["record"]  # -e writes its own record, in <run>/eval/
    assert os.path.dirname(record) == os.path.join(tmp_path, "no_config", "w", "prune_rate=1.0", "search",
                                                   "width_mult=0.125", "eval")
    with open(record) as fh:
        assert json.load(fh)["robust_acc1"] == out["robust_acc1"]


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


def test_autoattack_runs_in_fp32_and_targets_9_classes(monkeypatch):
    """Under autocast AutoAttack still runs in fp32; APGD-T/FAB-T target 9 classes (the
    reference), not n_classes - 1 = 19."""
    model, built = _Recorder().eval(), []
    real_build = aa.build_autoattack
    monkeypatch.setattr(aa, "build_autoattack", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    x, y = torch.rand(3, 3, 4, 4), torch.tensor([0, 5, 19])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        aa.autoattack(model, x, y, 8 / 255, steps=1, n_queries=5)
    assert model.autocast and not any(model.autocast)
    members = built[0]._autoattack.attacks
    assert members[1].n_target_classes == 9 and members[2].n_target_classes == 9


def test_test_trans_evaluates_single_tickets_with_autoattack(tmp_path):
    x, network = shared_network()
    for i, k in enumerate((0.9, 0.95)):
        cfg, model = ticket_of(network, k, x, seed=i)
        save_ticket(tmp_path / f"net_{k}.pth", cfg, model, k)
    out = test_trans.main(FLAGS + ["--pretrained", str(tmp_path / "net_0.9.pth"), "--eval_attack", "autoattack",
                                   "--aa_steps", "5", "--n_eval", "8", "--epsilon", "8", "--workers", "0",
                                   "--log-dir", str(tmp_path / "runs"), "--name", "aa"])
    paper = out["matrices"]["paper"]
    assert out["robust_attack"] == "autoattack" and len(paper) == 1 and len(paper[0]) == 2
    assert all(r < n for r, n in zip(out["robust_acc1"], out["natural_acc1"])), "the attack must do something"
    assert out["robust_acc1"][0] <= paper[0][0] + 1e-9  # AutoAttack no weaker than PGD-20 on the source
