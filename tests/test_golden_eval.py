"""Golden: the validation attack (PGD-20, eps 8, step 2, per-example early stop) against the
original's ``validate_adv`` (tests/golden/eval_pgd20.json).

The seeded cResNet18 preset (k = 0.1, search freezing, fresh BatchNorm statistics) comes
from the CLI's path (``trainers.loop.prepare``); the labels are its own clean eval-mode
predictions on ``inputs32``; ``torch.manual_seed(123)`` precedes the attack, whose random
start is drawn per channel as the original's. The attack is the one validation uses
(``EVAL_ATTACKS['pgd']``), run through ``evaluation.evaluate.evaluate``. Each attack forward
is recorded (``attacks.pgd.input_gradient``): ours runs on the still-correct examples only
(compacted), so per-example correctness is mapped back through the active set.
"""
import functools
import json
import os
from unittest import mock

import numpy as np
import pytest
import torch

import attacks.pgd as pgd_module
from evaluation.evaluate import EVAL_ATTACKS, evaluate
from tests.test_golden_steps import GOLDEN, normalised, pixel_std
from tests.golden_steps2_run import build


@functools.lru_cache(maxsize=None)
def golden():
    with open(os.path.join(GOLDEN, "eval_pgd20.json")) as fh:
        return json.load(fh)


@functools.lru_cache(maxsize=None)
def attacked(work_dir):
    g = golden()
    cfg, model = build({"cli": g["cli"], "entry_script": "main.py", "variant": "eval_pgd20"}, work_dir)
    x = torch.from_numpy(np.load(os.path.join(GOLDEN, "inputs32.npy")))
    model.eval()
    with torch.no_grad():
        clean = model(x)
    y = clean.argmax(1)
    forwards, real = [], pgd_module.input_gradient

    def recorded(model, x, delta, y, *args, **kwargs):
        grad, logits = real(model, x, delta, y, *args, **kwargs)
        forwards.append((x + delta, logits, y, model.training))
        return grad, logits

    attack = EVAL_ATTACKS.get("pgd")(cfg)
    adv = []

    def kept(model, x, y):
        adv.append(attack(model, x, y))
        return adv[-1]
    torch.manual_seed(123)
    with mock.patch.object(pgd_module, "input_gradient", recorded):
        robust = evaluate(model, [(x, y)], torch.device("cpu"), attack=kept)
    with torch.no_grad():
        final = model(adv[0])
    return dict(x=x, y=y, clean=clean, forwards=forwards, robust=robust, x_adv=adv[0], final=final)


@pytest.fixture()
def run(tmp_path_factory):
    return attacked(str(tmp_path_factory.getbasetemp()))


def per_example_correct(forwards, n):
    """Correctness of every example at each attack forward (an inactive example keeps its last)."""
    active, rows = torch.arange(n), []
    for _, logits, y, _ in forwards:
        row = torch.zeros(n, dtype=torch.bool) if not rows else rows[-1].clone()
        ok = logits.argmax(1) == y
        row[active] = ok
        rows.append(row)
        active = active[ok]
    return rows


def test_golden_eval_labels_and_clean_logits(run):
    g = golden()
    assert run["y"].tolist() == g["labels_used"]
    want = torch.tensor(g["clean_logits_eval"])
    torch.testing.assert_close(run["clean"], want, rtol=0, atol=1e-5 * float(want.abs().max()))


def test_golden_eval_random_start(run):
    """The first attack forward's input is X + the original's random start (per channel, clamped)."""
    x_first = run["forwards"][0][0]
    start = torch.from_numpy(np.load(os.path.join(GOLDEN, golden()["delta0_file"])))
    torch.testing.assert_close(normalised(x_first) - normalised(run["x"]), start, rtol=0, atol=1e-6)


def test_golden_eval_early_stop_sequence(run):
    """Still-correct count per attack forward [31, 13, 5, 0]: 3 gradient steps, then a forward
    that finds none correct ends the attack; each example's correctness matches."""
    g = golden()
    assert all(not training for *_, training in run["forwards"])  # eval mode throughout
    counts = [int((logits.argmax(1) == y).sum()) for _, logits, y, _ in run["forwards"]]
    assert counts == g["still_correct_per_attack_forward"]
    rows = per_example_correct(run["forwards"], len(run["y"]))
    assert [r.tolist() for r in rows] == g["correct_per_attack_forward"]


def test_golden_eval_adversarial_input_and_accuracy(run):
    g = golden()
    gold = torch.from_numpy(np.load(os.path.join(GOLDEN, g["xadv_file"])))
    torch.testing.assert_close(normalised(run["x_adv"]), gold, rtol=0, atol=1e-6)
    linf = ((run["x_adv"] - run["x"]) / pixel_std()).abs().flatten(1).max(1).values
    assert linf.tolist() == pytest.approx(g["per_example_delta_linf_norm_units"], rel=1e-5)
    assert (run["final"].argmax(1) == run["y"]).tolist() == g["correct_after_attack"]
    assert run["robust"]["acc1"] == g["robust_acc1"] and run["robust"]["acc5"] == g["robust_acc5"]
    assert run["robust"]["loss"] == pytest.approx(g["final_loss"], rel=1e-6)
    want = torch.tensor(g["final_logits"])
    torch.testing.assert_close(run["final"], want, rtol=0, atol=1e-5 * float(want.abs().max()))
