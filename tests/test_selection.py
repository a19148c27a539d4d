"""--val_split (model selection on a hold-out of the training set), the best_*/last_* fields of
results.json, its evaluation protocol, and re-evaluation when a resumed run's protocol changed."""
import json
import logging
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch

import main as main_entry
from data import build_dataset, subset
from data.holdout import labels_of, split_holdout, stratified_indices
from models import build_model
from tests.helpers import ROOT
from evaluation.evaluate import attack_settings
from utils.checkpoint import extract_state_dict, load_checkpoint
from utils.config import parse_config
from utils.errors import UserError
from utils.provenance import eval_protocol, protocol_changes

FLAGS = ["--set", "Digits", "--arch", "cResNet18", "--width-mult", "0.125", "-b", "64", "--low-data", "0.15",
         "--epochs", "1", "--val_every", "1", "--seed", "0", "--workers", "0", "--prune-rate", "0.3",
         "--attack_type", "pgd", "--attack_iters", "1", "--val_split", "0.2", "--name", "vs"]


def test_holdout_is_stratified_disjoint_seeded_and_unaugmented():
    data = build_dataset(parse_config(["--set", "Digits"]))
    labels = labels_of(data.train)
    kept, held = stratified_indices(labels, 0.2)
    assert sorted(kept + held) == list(range(len(labels))) and not set(kept) & set(held)
    per_class, held_per_class = Counter(labels), Counter(labels[i] for i in held)
    assert all(held_per_class[c] == round(0.2 * n) for c, n in per_class.items())
    assert (kept, held) == stratified_indices(labels, 0.2)
    split = split_holdout(data, 0.2)
    assert len(split.train) == len(kept) and len(split.holdout) == len(held) and split.val is data.val
    for j in (0, 5):  # served without the training shift: exactly the stored image
        image, label = split.holdout[j]
        assert torch.equal(image, data.train.images[held[j]].expand(3, -1, -1)) and label == labels[held[j]]
    assert data.train.shift > 0, "the training set itself keeps its augmentation"


def test_protocol_records_and_compares_the_settings():
    cfg = parse_config(["--attack_type", "pgd", "--epsilon", "4", "--n_eval", "100", "--seed", "3"])
    p = eval_protocol(cfg, settings=attack_settings("pgd", cfg))
    assert (p["attack"], p["epsilon"], p["steps"], p["step_size"], p["restarts"], p["early_stop"]) == \
        ("pgd", 4, 20, 2, 1, True)
    assert (p["n_eval"], p["seed"], p["eot_samples"], p["passes"], p["aa_steps"]) == (100, 3, 10, 3, None)
    sampled = parse_config(["--attack_type", "pgd", "--conv_type", "SampleSubnetConv"])
    assert attack_settings("pgd", sampled)["early_stop"] is False, "no early stop runs on a randomised model"
    aa_cfg = parse_config(["--eval_attack", "autoattack", "--aa_steps", "7", "--aa_version", "rand"])
    aa = eval_protocol(aa_cfg, settings=attack_settings("autoattack", aa_cfg))
    assert (aa["attack"], aa["steps"], aa["aa_steps"], aa["version"], aa["aa_version"]) == (
        "autoattack", 7, 7, "rand", "rand")
    assert aa["autoattack"]["settings"]["apgd-ce"]["eot_iter"] == 20
    saved = vars(parse_config(["--attack_type", "pgd", "--epsilon", "8", "--n_eval", "100", "--seed", "5"]))
    assert protocol_changes(saved, cfg) == ["epsilon: 8.0 -> 4.0"]  # the seed moves starts, not the protocol
    assert protocol_changes(None, cfg) == ["unknown (the checkpoint stores no config)"]


def test_epsilon_units_unit_converts_a_unit_radius_once():
    from utils.eval_checks import check_eval_settings
    cfg = parse_config(["--attack_type", "pgd", "--epsilon", "0.031372549", "--epsilon-units", "unit"])
    check_eval_settings(cfg, "main")
    check_eval_settings(cfg, "main")  # idempotent: entry points may check twice
    assert cfg.epsilon == pytest.approx(8.0) and cfg.epsilon_given == pytest.approx(0.031372549)
    with pytest.raises(UserError, match="did you mean 8"):
        check_eval_settings(parse_config(["--epsilon", "0.03"]), "main")
    check_eval_settings(parse_config(["--epsilon", "0"]), "main")  # 0 (natural) stays allowed


def test_provenance_and_attack_modules_import_no_upward_or_circular_module():
    """utils.provenance receives what it records (imports no attack); attacks.randomized does not
    import attacks.autoattack (which imports it)."""
    code = ("import sys, utils.provenance; assert not any(m.startswith('attacks') for m in sys.modules); "
            "import attacks.randomized; assert 'attacks.autoattack' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1000:]


def natural_accuracy(path, dataset, n):
    """Top-1 (%) of the checkpoint at ``path`` on the first ``n`` examples of ``dataset``."""
    cfg = parse_config(FLAGS)
    model = build_model(cfg, 10, 3, 32, (0.5,) * 3, (0.5,) * 3)  # Digits' normalisation (not in the state dict)
    model.load_state_dict(extract_state_dict(load_checkpoint(path), path))
    x, y = zip(*[subset(dataset, n)[i] for i in range(n)])
    with torch.no_grad():
        return 100.0 * (model.eval()(torch.stack(x)).argmax(1) == torch.tensor(y)).float().mean().item()


def test_val_split_selects_on_the_holdout_and_a_changed_protocol_re_evaluates(tmp_path, caplog):
    logs = ["--log-dir", str(tmp_path)]
    first = main_entry.main(FLAGS + logs + ["--n_eval", "40"])
    run = tmp_path / "no_config" / "vs" / "prune_rate=0.3" / "search" / "width_mult=0.125"
    with open(run / "results.json") as fh:
        assert json.load(fh) == json.loads(json.dumps(first))
    assert "hold-out of 0.2" in first["selection"] and first["best_epoch"] == 0
    assert first["eval_protocol"]["val_split"] == 0.2 and first["eval_protocol"]["n_eval"] == 40
    assert first["last_robust_acc1"] == first["robust_acc1"] == first["best_robust_acc1"]  # one epoch
    data = split_holdout(build_dataset(parse_config(FLAGS)), 0.2)
    best, latest = str(run / "checkpoints" / "model_best.pth"), str(run / "checkpoints" / "model_latest.pth")
    # selection numbers come from the hold-out, reported ones from the test split (which differ here)
    for n in (40, 8):
        assert natural_accuracy(latest, data.val, n) != natural_accuracy(latest, data.holdout, n)
    assert first["natural_acc1_at_best_robustness"] == pytest.approx(natural_accuracy(best, data.holdout, 40))
    assert first["last_natural_acc1"] == pytest.approx(natural_accuracy(latest, data.val, 40))

    logger = logging.getLogger("rst")  # does not propagate to the root logger caplog watches
    logger.addHandler(caplog.handler)
    try:
        again = main_entry.main(FLAGS + logs + ["--n_eval", "8", "--automatic_resume"])
    finally:
        logger.removeHandler(caplog.handler)
    assert "re-evaluating" in caplog.text and "n_eval: 40 -> 8" in caplog.text
    assert again["eval_protocol"]["n_eval"] == 8 and again["epochs_done"] == 1
    assert again["last_natural_acc1"] == pytest.approx(natural_accuracy(latest, data.val, 8))
    assert again["natural_acc1_at_best_robustness"] == pytest.approx(natural_accuracy(best, data.holdout, 8))
    assert again["best_natural_acc1"] == pytest.approx(natural_accuracy(best, data.val, 8))

    before = os.path.getmtime(run / "results.json")
    with pytest.raises(UserError, match="--val_split 0.3 differs from the checkpoint's"):
        main_entry.main(FLAGS + logs + ["--n_eval", "8", "--automatic_resume", "--val_split", "0.3"])
    assert os.path.getmtime(run / "results.json") == before
