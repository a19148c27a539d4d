"""The threat model as settings: --train_step / --eval_step reach the attacks and every protocol record,
an evaluation PGD that cannot span the radius is refused, train_full.py --val_rule, and the calibration
command (figures.py calibration) on the smoke profile."""
import json
import os

import pytest
import torch

from attacks.pgd import pgd20
from evaluation import r2s_eval, transfer_examples
from evaluation.evaluate import EVAL_ATTACKS, attack_settings
from tests.helpers import ROOT, run_cli, tiny_model, train_natural
from tests.test_r2s import FLAGS, digits
from trainers.state import should_validate
from trainers.train import make_train_attack
from utils.config import parse_config
from utils.errors import UserError
from utils.eval_checks import check_eval_settings
from utils.provenance import eval_protocol, main_protocol


@pytest.fixture(scope="module")
def fitted():
    x, y, _, _ = digits(n_train=64, n_val=1)
    torch.manual_seed(0)
    model = train_natural(tiny_model("--set", "Digits", num_classes=10), x, y, steps=20)
    return model.eval(), x[:16], y[:16]


def _run(attack, model, x, y, seed=0):
    torch.manual_seed(seed)
    return attack(model, x, y)


def test_train_step_reaches_the_training_pgd(fitted):
    model, x, y = fitted
    small = make_train_attack(parse_config(["--attack_type", "pgd", "--attack_iters", "1", "--train_step", "1"]))
    large = make_train_attack(parse_config(["--attack_type", "pgd", "--attack_iters", "1", "--train_step", "4"]))
    start = _run(lambda m, a, b: a + 0 * torch.empty_like(a).uniform_(-8 / 255, 8 / 255), model, x, y)
    step_small = (_run(small, model, x, y) - start).abs()
    step_large = (_run(large, model, x, y) - start).abs()
    assert not torch.equal(step_small, step_large)
    assert small.keywords["step"] == pytest.approx(1 / 255) and large.keywords["step"] == pytest.approx(4 / 255)
    default = make_train_attack(parse_config(["--attack_type", "pgd"]))
    assert default.keywords["step"] == pytest.approx(2 / 255)  # the original's


def test_eval_step_reaches_pgd20_and_changes_its_iterates(fitted):
    model, x, y = fitted
    cfg2, cfg6 = (parse_config(["--epsilon", "16", "--eval_step", s]) for s in ("2", "6"))
    a2, a6 = EVAL_ATTACKS.get("pgd")(cfg2), EVAL_ATTACKS.get("pgd")(cfg6)
    assert a6.keywords["step"] == pytest.approx(6 / 255)
    x2, x6 = _run(a2, model, x, y), _run(a6, model, x, y)
    assert not torch.equal(x2, x6)
    torch.manual_seed(0)
    assert torch.equal(x6, pgd20(model, x, y, 16 / 255, step=6 / 255))
    assert (x6 - x).abs().max() <= 16 / 255 + 1e-6
    assert attack_settings("pgd", cfg6)["step_size"] == 6 and attack_settings("pgd_transfer", cfg6)["step_size"] == 6


def test_eval_step_reaches_transfer_examples_and_r2s_attacks(fitted):
    model, x, y = fitted
    seen = []

    def spy(source, xb, yb, eps, step):
        seen.append(step)
        return transfer_examples.paper_and_strong(source, xb, yb, eps, step=step)

    transfer_examples.source_correctness(model, [model], [(x, y)], torch.device("cpu"), 16 / 255, 0, examples=spy,
                                         step=5 / 255)
    assert seen == [5 / 255]
    cfg = parse_config(FLAGS + ["--epsilon", "16", "--eval_step", "5", "--eot_steps", "3"])
    attacks = r2s_eval.adaptive_attacks(cfg)
    assert {name: a.kwargs["step"] for name, a in attacks.items()} == pytest.approx(
        {name: 5 / 255 for name in attacks})


def test_main_protocol_records_both_steps():
    cfg = parse_config(["--attack_type", "pgd", "--epsilon", "32", "--train_step", "8", "--eval_step", "8",
                        "--attack_iters", "2"])
    p = main_protocol(cfg, attack_settings("pgd", cfg))
    assert (p["epsilon"], p["step_size"], p["steps"], p["train_step"], p["train_iters"]) == (32, 8, 20, 8, 2)
    assert p["allow_short_attack"] is False


PROGS = {"main": ("main.py", ["--attack_type", "pgd", "--prune-rate", "0.5"]), "test_trans": ("test_trans.py", []),
         "train_full": ("train_full.py", ["--attack_type", "pgd"])}


def cfg_of(entry, *args):
    prog, extra = PROGS[entry]
    return parse_config([*args, *extra], prog=prog)


@pytest.mark.parametrize("entry", sorted(PROGS))
def test_an_evaluation_pgd_that_cannot_span_the_ball_is_refused(entry):
    with pytest.raises(UserError, match=r"--eval_step 2 x 20 steps \(PGD-20\) = 40/255 cannot reach .* 64/255"):
        check_eval_settings(cfg_of(entry, "--epsilon", "64"), entry)
    check_eval_settings(cfg_of(entry, "--epsilon", "64", "--eval_step", "3.2"), entry)  # 64 = 20 x 3.2
    cfg = cfg_of(entry, "--epsilon", "64", "--allow_short_attack")
    check_eval_settings(cfg, entry)
    assert eval_protocol(cfg, "pgd", attack_settings("pgd", cfg))["allow_short_attack"] is True


def test_r2s_eot_steps_must_span_the_ball_too():
    cfg = parse_config(FLAGS + ["--r2s", "--epsilon", "32", "--eval_step", "8", "--eot_steps", "3"],
                       prog="test_trans.py")
    with pytest.raises(UserError, match=r"--eot_steps"):
        check_eval_settings(cfg, "test_trans")


def test_natural_training_checks_no_reach():
    check_eval_settings(parse_config(["--epsilon", "64", "--prune-rate", "0.5"], prog="main.py"), "main")


def test_step_flags_are_range_checked_at_the_cli(tmp_path):
    proc = run_cli("main.py", "--set", "Digits", "--eval_step", "0", "--prune-rate", "0.5", "--log-dir", tmp_path)
    assert proc.returncode == 2 and "--eval_step is in 0-255 pixel units" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_val_rule_every_validates_dense_on_mains_epochs():
    epochs, every = 20, 2
    main = [e for e in range(epochs) if should_validate(e, epochs, every)]
    original = [e for e in range(epochs) if should_validate(e, epochs, every, train_full=True)]
    assert original == [0, 10, 19] and main == list(range(0, 20, 2)) + [19]
    with pytest.raises(UserError, match="it is a train_full.py flag"):
        parse_config(["--val_rule", "every"], prog="main.py")


def test_train_full_val_rule_every_end_to_end(tmp_path):
    proc = run_cli("train_full.py", "--config", "config_rst/resnet18-usc-unsigned-cifar.yaml", "--set", "Digits",
                   "--width-mult", "0.125", "--epochs", "3", "--one-batch", "--batch_size", "16", "--n_eval", "8",
                   "--attack_type", "pgd", "--attack_iters", "1", "--epsilon", "16", "--train_step", "4",
                   "--eval_step", "4", "--val_every", "1", "--val_rule", "every", "--lr_policy", "constant_lr",
                   "--workers", "0", "--seed", "0", "--log-dir", tmp_path, "--name", "d")
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = [os.path.join(d, "results.json") for d, _, files in os.walk(tmp_path) if "results.json" in files]
    with open(found[0]) as fh:
        res = json.load(fh)
    assert [h["epoch"] for h in res["history"]] == [0, 1, 2]  # the original rule would skip epoch 1
    assert (res["eval_protocol"]["step_size"], res["eval_protocol"]["train_step"]) == (4, 4)


def test_calibration_smoke(tmp_path):
    proc = run_cli("experiments/figures.py", "calibration", "--profile", "smoke", "--out", tmp_path, "--jobs", "2",
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = tmp_path / "calibration"
    with open(folder / "calibration.json") as fh:
        out = json.load(fh)
    assert out["chosen_radius"] == 8 and out["rule"]["drop"] == [0, 100]  # the smoke rule accepts any drop
    assert out["paper"]["drop"] == pytest.approx(31.54) and out["steps"] == {"train": 0.25, "eval": 0.25}
    text = (folder / "calibration.csv").read_text()
    assert "--epsilon 32.0 --train_step 8.0 --eval_step 8.0" in text  # steps eps/4, in every command
    assert (folder / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    assert "chosen radius: 8/255" in (folder / "calibration.md").read_text()


def test_calibration_rule_picks_the_smallest_radius_in_range():
    from experiments.calibration import choose_radius
    rows = [{"radius": r, "model": m, "best_natural_acc1": 99.0, "best_robust_acc1": 99.0 - d}
            for r, drops in ((8, (3, 5)), (16, (20, 24)), (32, (28, 36)), (48, (50, 30))) for m, d in zip("ab", drops)]
    assert choose_radius(rows, (25, 40), 2) == 32   # 16: mean 22 below; 48: mean 40 in range but larger
    assert choose_radius(rows, (41, 45), 2) is None
    assert choose_radius([r for r in rows if r["model"] == "a"], (25, 40), 2) is None  # one arch missing


def test_spec_files_parse():
    from experiments.spec import load_spec
    spec = load_spec("calibration", "digits")
    assert spec["radii"] == [8, 16, 32, 48, 64] and len(spec["archs"]) == 2 and spec["seeds"] >= 2
    for fig in ("existence", "property", "application"):
        digits_, eps8 = load_spec(fig, "digits"), load_spec(fig, "digits-eps8")
        assert eps8["flags"]["epsilon"] == 8 and digits_["seeds"] == 5
        flags = digits_["flags"]
        assert flags["eval_step"] * 20 >= flags["epsilon"] and flags["train_step"] == flags["epsilon"] / 4
    assert os.path.isfile(os.path.join(ROOT, "experiments", "configs", "calibration-smoke.yaml"))
