"""The evaluation side held to the training side's mutation standard: each weakening of an
evaluation attack that a reviewer planted, and the test that fails on it.

Planted in the code (the line shown, or its equivalent), the named tests run, seen to fail,
the line reverted with ``git checkout`` (issue 24). "planted": seen failing that way;
"by reading": the test's assertions cover it, not re-planted then.

| weakening (planted line) | test that fails | |
|---|---|---|
| AA-rand replaced by the reference's rand cascade, which returns unbroken examples clean (``return _in_ball(x, aa.run_standard_evaluation(xf, y, batch_size=len(y))[0], epsilon)`` before the APGD loop) | test_autoattack.py::test_autoattack_rand_needs_its_eot_passes_and_attacks_every_example | planted |
| R2S attacks with half the step (``eval_step(cfg) / 2`` in ``adaptive_attacks``, evaluation/r2s_eval.py) | test_every_r2s_attack_takes_its_step_and_iterations | planted |
| EOT-PGD halving its step inside (``_strongest_iterate(x, y, epsilon, step / 2, ...)``) | test_every_r2s_attack_takes_its_step_and_iterations, test_r2s_json_records_what_ran_and_its_headline_agrees | planted |
| r2s.json step size a constant (``"step_size": 2.0`` in ``measured``) | test_r2s_json_records_what_ran_and_its_headline_agrees | planted |
| headline protocol not taken from the per-attack ones (``aa_steps: null``) | test_r2s_json_records_what_ran_and_its_headline_agrees | planted |
| AA-rand's expected correctness from 2 members (``for v in self.views[:2]``) | test_rand_tracker_expectation_is_exact_over_members | planted |
| ARC from the clean input (``delta = torch.zeros_like(x)``) | test_adaptive_attacks_start_from_a_random_start[arc] | planted |
| AA-rand with one EOT pass (``aa.apgd.eot_iter = 1``) | test_autoattack.py::test_autoattack_rand_needs_its_eot_passes_and_attacks_every_example | planted |
| fewer Square queries not labelled reduced (``n_queries`` left out of ``aa_cost.COMPARED``) | test_reduced_autoattack_is_labelled_in_every_record, test_autoattack.py::test_test_trans_evaluates_single_tickets_with_autoattack | planted |
| worst case within a pass only (``overall = within``) | test_r2s_eval.py::test_worst_case_is_the_per_example_minimum_over_attacks_and_passes | planted |
| R2S strong transfer without the per-example min (``strong = correct["highest_loss"]...``) | test_r2s_eval.py::test_worst_case_includes_every_attack | planted |
| matrix strong transfer without the min (``"strong": correct["highest_loss"]``) | test_transfer.py::test_strong_is_never_above_paper_even_when_the_highest_loss_iterate_is_weaker | planted |
| early stop on a randomised model (``early_stop=True`` in pgd20) | test_attacks.py::test_random_models_are_attacked_without_early_stop | planted |
| R2S natural accuracy from one member (``natural = clean[0].double()``) | test_r2s_eval.py::test_natural_is_the_members_mean_and_transfer_from_j_is_scored_on_every_member | planted |
| EOT gradient sampled where the members are known (``if False:`` before the exact branch) | test_r2s_eval.py::test_exact_eot_gradient_is_the_mean_of_member_gradients | planted |
| AutoAttack settings recorded from the config, not the objects that ran | test_autoattack.py::test_evaluate_cli_runs_the_reference_with_the_recorded_settings | by reading |
| AutoAttack under autocast / the reference's seeding leaking into the caller | test_autoattack.py::test_autoattack_runs_in_fp32_with_the_reference_targets, ::test_autoattack_not_weaker_than_pgd20 | by reading |
| main.py PGD-20 with another step, iteration count or no early stop | test_autoattack.py::test_evaluate_cli_wires_pgd20 | by reading |
| ARC accepting against the clean point's expected accuracy | test_randomized.py::test_arc_compares_against_its_start_not_the_clean_point | by reading |
| an R2S attack ascending the wrong sign / a broken acceptance rule | test_randomized.py::test_adaptive_attacks_lower_the_expected_accuracy | by reading |
"""
import json
import logging
import pathlib

import pytest
import torch

import test_trans
from attacks import autoattack as aa
from attacks import pgd as attacks_pgd
from attacks import randomized
from attacks.autoattack import AutoAttackEval, _Tracker, autoattack_rand
from attacks.pgd import random_start
from evaluation import r2s_eval
from tests.test_r2s import FLAGS, trained_dir  # noqa: F401  (a fixture)
from utils.config import parse_config
from utils.summary import protocol_text

EPS = 8 / 255
SCALE = 50.0  # logit per unit of mean pixel value
OFF = -10.0  # the third class's logit


class ThresholdSwitch(torch.nn.Module):
    """A uniform random switch over linear three-class members on 1x4x4 images: member j's
    logits are SCALE * (mean(x) - t_j), 0 and OFF for classes 0, 1, 2 (class 2 never wins;
    it is there for APGD-DLR, which needs three classes). A finite member set, exposed as
    R2S exposes it: ``num_members``, ``member(j)``."""

    random_forward = True

    def __init__(self, thresholds):
        super().__init__()
        self.views = torch.nn.ModuleList()
        for t in thresholds:
            layer = torch.nn.Linear(16, 3)
            with torch.no_grad():
                layer.weight.copy_(torch.stack([torch.full((16,), SCALE / 16), torch.zeros(16), torch.zeros(16)]))
                layer.bias.copy_(torch.tensor([-SCALE * t, 0.0, OFF]))
            self.views.append(torch.nn.Sequential(torch.nn.Flatten(), layer))
        self.num_members = len(thresholds)

    def member(self, j):
        return self.views[j]

    def forward(self, x):
        return self.member(int(torch.randint(0, self.num_members, ())))(x)


def images(*values):
    return torch.stack([torch.full((1, 4, 4), float(v)) for v in values])


def test_rand_tracker_expectation_is_exact_over_members():
    """AA-rand scores each iterate by its expected correctness over EVERY member: for means
    0.1, 0.3, 0.5, 0.7 and thresholds 0.2, 0.4, 0.6 that is 0, 1/3, 2/3, 1 (two members
    would give halves), and the mean cross-entropy over the three (hand-computed); the
    record says how it was computed, counted while scoring."""
    thresholds = (0.2, 0.4, 0.6)
    model, x = ThresholdSwitch(thresholds), images(0.1, 0.3, 0.5, 0.7)
    y = torch.zeros(4, dtype=torch.long)
    tracker = _Tracker(model, x, y)
    tracker(x)
    assert tracker.ok.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1], abs=1e-12)
    means = torch.tensor([0.1, 0.3, 0.5, 0.7])
    d = [SCALE * (means - t) for t in thresholds]  # class 0's logit, against 0 and OFF
    ce = torch.stack([torch.log(torch.exp(dj) + 1 + torch.exp(torch.tensor(OFF))) - dj for dj in d]).mean(0)
    assert torch.allclose(tracker.loss, ce, rtol=1e-4)
    assert tracker.expectation() == "exact over members"
    record = []
    autoattack_rand(model, x, y, EPS, steps=2, eot_iter=2, record=record)
    assert record[0]["expectation"] == "exact over members"


@pytest.mark.parametrize("name", ["switch_pgd20", "eot_pgd", "ensemble_pgd", "arc"])
def test_adaptive_attacks_start_from_a_random_start(name):
    """With no step taken, every R2S attack returns its start: the uniform random start of
    ``attacks.pgd.random_start`` under the same seed, not the clean input."""
    model, x = ThresholdSwitch((0.2, 0.4, 0.6)), images(0.3, 0.5, 0.7)
    y = torch.zeros(3, dtype=torch.long)
    torch.manual_seed(7)
    start = x + random_start(x, EPS)
    torch.manual_seed(7)
    out = randomized.RANDOMIZED_ATTACKS.get(name)(model, x, y, EPS, iters=0)
    assert torch.equal(out, start) and not torch.equal(out, x)


def spy_steps(monkeypatch):
    """Every signed step the R2S attacks take ({module: [step, ...]}) and ARC's local steps
    ([(step argument, L-inf size of the step it built per example)])."""
    seen = {"randomized": [], "pgd": [], "arc": []}
    for module, key in ((randomized, "randomized"), (attacks_pgd, "pgd")):
        real = module.sign_step

        def spy(x, delta, grad, step, epsilon, real=real, key=key):
            seen[key].append(step)
            return real(x, delta, grad, step, epsilon)
        monkeypatch.setattr(module, "sign_step", spy)
    real_local = randomized._arc_local_step

    def local(model, views, x, y, delta, ok_start, epsilon, step):
        out = real_local(model, views, x, y, delta, ok_start, epsilon, step)
        seen["arc"].append((step, out.flatten(1).abs().amax(1)))
        return out
    monkeypatch.setattr(randomized, "_arc_local_step", local)
    return seen


def test_every_r2s_attack_takes_its_step_and_iterations(monkeypatch):
    """Through ``adaptive_attacks`` (what test_trans.py --r2s runs): switch PGD-20 takes 20 steps
    of 2/255; EOT-PGD, ensemble PGD and ARC --eot_steps (3) steps of 2/255, ARC's local
    steps of L-inf size exactly 2/255 (members that never fail: nothing finishes early)."""
    cfg = parse_config(FLAGS + ["--epsilon", "8", "--eot_steps", "3", "--eot_samples", "10"])
    attacks = r2s_eval.adaptive_attacks(cfg)
    model, x = ThresholdSwitch((-5.0, -4.0, -3.0)), images(0.3, 0.5)
    y = torch.zeros(2, dtype=torch.long)
    expected = {"switch_pgd20": ("pgd", 20), "eot_pgd": ("randomized", 3), "ensemble_pgd": ("randomized", 3),
                "arc": ("arc", 3)}
    for name, (where, count) in expected.items():
        seen = spy_steps(monkeypatch)
        attacks[name](model, x, y)
        steps = [s for s, _ in seen["arc"]] if where == "arc" else seen[where]
        assert len(steps) == count and all(s == pytest.approx(2 / 255) for s in steps), (name, steps)
        for _, size in seen["arc"]:
            assert torch.allclose(size, torch.full_like(size, 2 / 255)), size
        assert attacks[name].protocol()["step"] == pytest.approx(2 / 255)
        monkeypatch.undo()


def test_r2s_json_records_what_ran_and_its_headline_agrees(trained_dir, tmp_path, monkeypatch):  # noqa: F811
    """A run whose R2S attacks take half the step (the user's path: ``--eval_step 1``): r2s.json
    records 1/255 for every PGD-family attack and the transfer examples, the steps they took, and
    AutoAttack's 2 iterations; the headline protocol agrees field by field."""
    seen = spy_steps(monkeypatch)
    out = test_trans.main(FLAGS + ["--pretrained", str(trained_dir), "--r2s", "--n_eval", "4", "--eval_passes", "1",
                                   "--eot_samples", "3", "--eot_steps", "2", "--eval_attack", "autoattack",
                                   "--aa_steps", "2", "--epsilon", "2", "--eval_step", "1",
                                   "--log-dir", str(tmp_path), "--name", "h",
                                   "--workers", "0", "--seed", "0"])
    assert seen["randomized"] and all(s == pytest.approx(1 / 255) for s in seen["randomized"] + seen["pgd"])
    with open(pathlib.Path(out["model_file"]).parent.parent / "r2s.json") as fh:
        saved = json.load(fh)
    attacks, head = saved["attacks"], saved["eval_protocol"]
    for name, steps in (("switch_pgd20", 20), ("eot_pgd", 2), ("ensemble_pgd", 2), ("arc", 2)):
        p = attacks[name]["protocol"]
        assert (p["step_size"], p["steps"]) == (1.0, steps), name
    assert attacks["arc"]["protocol"]["rho"] == pytest.approx(0.05 * 2)
    assert attacks["eot_pgd"]["protocol"]["eot_samples"] == 3 and attacks["eot_pgd"]["protocol"]["eot_exact"]
    for key in ("transfer_paper", "transfer_strong"):
        assert (attacks[key]["protocol"]["step_size"], attacks[key]["protocol"]["steps"]) == (1.0, 20)
    aa_p = attacks["autoattack_rand"]["protocol"]
    assert aa_p["steps"] == 2 and aa_p["reduced"] and aa_p["settings"]["apgd-dlr"]["n_iter"] == 2
    for name in ("switch_pgd20", "eot_pgd", "ensemble_pgd", "arc", "autoattack_rand"):
        p = attacks[name]["protocol"]
        assert (p["epsilon"], p["n_eval"], p["seed"], p["passes"]) == (
            head["epsilon"], head["examples"], head["seed"], head["passes"]), name
    assert head["aa_steps"] == aa_p["steps"] == saved["aa_steps"] == 2
    assert head["aa_version"] == aa_p["requested_version"] == "standard" and head["aa_reduced"] == aa_p["reduced"]
    assert head["aa_queries"] is None, "AutoAttack rand runs no Square"
    for name in ("eot_pgd", "ensemble_pgd", "arc"):
        assert head["eot_steps"] == attacks[name]["protocol"]["steps"]
    assert head["eot_samples"] == attacks["eot_pgd"]["protocol"]["eot_samples"]
    assert head["eot_exact"] == attacks["eot_pgd"]["protocol"]["eot_exact"]


class Linear10(torch.nn.Module):
    """A deterministic linear classifier over 10 classes on 1x4x4 images (seeded)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_reduced_autoattack_is_labelled_in_every_record(caplog):
    """--aa_queries 7 reaches Square; the record lists it (and --aa_steps 3) as reduced, the
    reference's defaults list nothing, the summary table says REDUCED; one progress line per
    attack gives the examples left and the seconds left."""
    cfg = parse_config(["--epsilon", "8", "--eval_attack", "autoattack", "--aa_steps", "3", "--aa_queries", "7"])
    attack = aa.autoattack_from_config(cfg)
    model, x = Linear10().eval(), torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    with caplog.at_level(logging.INFO, logger="rst"):
        attack(model, x, y)
    ran = attack.protocol()
    assert ran["settings"]["square"]["n_queries"] == 7
    assert "square n_queries 7 (reference 5000)" in ran["reduced"] and "apgd-ce n_iter 3 (reference 100)" in ran[
        "reduced"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("AutoAttack standard (reduced)")]
    assert lines and lines[0].split(", ")[1].startswith("apgd-ce (1/4)") and "left robust" in lines[0]
    assert all(" s left in this call" in line for line in lines)
    full = aa.configured_settings(parse_config(["--eval_attack", "autoattack"]))
    assert full["reduced"] == [] and full["settings"]["square"]["n_queries"] == 5000
    from evaluation.evaluate import attack_settings
    from utils.provenance import main_protocol
    record = main_protocol(parse_config(["--attack_type", "pgd", "--eval_attack", "autoattack", "--aa_queries", "7"]),
                           attack_settings("autoattack", cfg))
    assert record["aa_queries"] == 7 and "REDUCED (" in protocol_text(record)
    assert "REDUCED" not in protocol_text(dict(record, reduced=[]))


def test_fewer_queries_re_measure_a_resumed_run_and_older_configs_ran_5000():
    """A stored config from before --aa_queries ran Square's 5000 queries: resuming with the default
    changes no protocol, with --aa_queries 7 it does (the run re-measures)."""
    from utils.provenance import protocol_changes
    from utils.run_dir import config_dict
    flags = ["--attack_type", "pgd", "--eval_attack", "autoattack"]
    old = config_dict(parse_config(flags))
    del old["aa_queries"]
    assert protocol_changes(old, parse_config(flags)) == []
    assert protocol_changes(old, parse_config(flags + ["--aa_queries", "7"])) == ["aa_queries: 5000 -> 7"]


def test_rand_progress_counts_the_examples_left(caplog):
    """AA-rand logs a line per attack (APGD-CE, APGD-DLR) with the examples its members still
    classify correctly: none of a switch whose members all fail, all of one never failing."""
    for thresholds, left in (((2.0, 3.0), 0), ((-5.0, -4.0), 2)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="rst"):
            AutoAttackEval(EPS, steps=2)(ThresholdSwitch(thresholds), images(0.3, 0.5), torch.zeros(2, dtype=torch.long))
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("AutoAttack rand (reduced)")]
        assert len(lines) == 2 and all(f"2 examples in, {left} left robust" in line for line in lines), lines
