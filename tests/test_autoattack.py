"""AutoAttack (torchattacks, standard version) as an evaluation attack."""
import json
import os

import pytest
import torch

import main as main_entry
import test_trans
from tests.test_r2s import FLAGS, digits, save_ticket, shared_network, ticket_of
from trainers.evaluate import EVAL_ATTACKS
from attacks.pgd import pgd20
from attacks.autoattack import autoattack
from utils.config import parse_config

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


def test_evaluate_cli_with_autoattack(trained, tmp_path):
    model, _, _ = trained
    ckpt = tmp_path / "tiny_1.0.pth"
    torch.save({"state_dict": model.state_dict(), "arch": "cResNet18", "prune_rate": 1.0}, ckpt)
    out = main_entry.main(FLAGS + ["--prune-rate", "1.0", "--evaluate", "--pretrained", str(ckpt), "--attack_type",
                                   "pgd", "--eval_attack", "autoattack", "--aa_steps", "5", "--n_eval", "8",
                                   "--epsilon", "8", "--log-dir", str(tmp_path), "--name", "aa", "--workers", "0"])
    assert out["eval_attack"] == "autoattack" and out["robust_acc1"] <= out["natural_acc1"]
    with open(os.path.join(tmp_path, "no_config", "aa", "prune_rate=1.0", "search", "results.json")) as fh:
        assert json.load(fh)["robust_acc1"] == out["robust_acc1"]


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
    assert all(r <= n for r, n in zip(out["robust_acc1"], out["natural_acc1"]))
    assert out["robust_acc1"][0] <= paper[0][0] + 1e-9  # AutoAttack no weaker than PGD-20 on the source
