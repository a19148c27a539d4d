"""Every task end to end through the real CLI on Digits (tiny model, one short epoch)."""
import json
import os

import pytest
import torch

import main as main_entry
from tests.helpers import run_cli

RESULT_KEYS = {"task", "arch", "set", "prune_rate", "epochs_done", "seed", "natural_acc1", "robust_acc1", "best_acc1",
               "natural_acc1_at_best_robustness", "train_seconds", "last_natural_acc1", "last_robust_acc1",
               "best_epoch", "best_natural_acc1", "best_robust_acc1", "selection", "eval_protocol", "history"}


def common(tmp, *extra):
    return ["--set", "Digits", "--arch", "cResNet18", "--width-mult", "0.125", "-b", "64", "--low-data", "0.15",
            "--n_eval", "32", "--epochs", "1", "--val_every", "1", "--seed", "0", "--log-dir", str(tmp),
            "--name", "t", "--workers", "0", "--attack_type", "pgd", "--attack_iters", "1", *extra]


def run_dir(tmp, task, k="0.3"):
    """The original's layout: <root>/<config stem>/<name>/prune_rate=<k>/<task>/width_mult=<w>."""
    return os.path.join(str(tmp), "no_config", "t", f"prune_rate={k}", task, "width_mult=0.125")


def check_run(path, task):
    for name in ("model_latest.pth", "model_best.pth"):
        assert os.path.isfile(os.path.join(path, "checkpoints", name))
    for name in ("log.txt", "settings.txt", "results.json"):
        assert os.path.isfile(os.path.join(path, name))
    with open(os.path.join(path, "results.json")) as fh:
        res = json.load(fh)
    assert set(res) == RESULT_KEYS and res["task"] == task and res["epochs_done"] == 1
    assert 0 <= res["natural_acc1"] <= 100 and 0 <= res["robust_acc1"] <= 100
    return res


def scores(path):
    state = torch.load(os.path.join(path, "checkpoints", "model_best.pth"), weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.endswith("scores")}, state


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chain")
    proc = run_cli("main.py", *common(tmp, "--prune-rate", "0.3", "--task", "search"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    check_run(run_dir(tmp, "search"), "search")
    return tmp


@pytest.mark.parametrize("task", ["ft_inherit", "ft_reinit", "ft_full"])
def test_finetune_finds_the_search_run_by_itself(searched, task):
    proc = run_cli("main.py", *common(searched, "--prune-rate", "0.3", "--task", task))
    assert proc.returncode == 0, proc.stderr[-2000:]
    check_run(run_dir(searched, task), task)
    search_scores, search_state = scores(run_dir(searched, "search"))
    ft_scores, ft_state = scores(run_dir(searched, task))
    assert all(torch.equal(search_scores[k], ft_scores[k]) for k in search_scores), "mask must be frozen"
    assert not torch.equal(search_state["conv1.weight"], ft_state["conv1.weight"]), "weights must train"


def test_evaluate_prints_accuracies(searched, tmp_path):
    ckpt = os.path.join(run_dir(searched, "search"), "checkpoints", "model_best.pth")
    proc = run_cli("main.py", *common(tmp_path, "--prune-rate", "0.3", "-e", "--pretrained", ckpt))
    assert proc.returncode == 0, proc.stderr[-2000:]
    *_, line, last = proc.stdout.strip().splitlines()
    assert line.startswith("Natural Acc: ") and ", Robust Acc: " in line
    res = json.loads(last)  # the last stdout line: the JSON record, also written to <run>/eval/
    with open(res["record"]) as fh:
        assert json.load(fh) == res
    assert os.path.dirname(res["record"]) == os.path.join(run_dir(tmp_path, "search"), "eval")
    assert not os.path.exists(os.path.join(run_dir(tmp_path, "search"), "results.json"))
    assert f"{res['natural_acc1']:.2f}" in line and f"{res['robust_acc1']:.2f}" in line


def test_train_full_checkpoint_draws_an_rtt(tmp_path):
    proc = run_cli("train_full.py", *common(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    full = run_dir(tmp_path, "search", k="1.0")  # the original's train_full runs in its --task folder
    check_run(full, "train_full")
    ckpt = os.path.join(full, "checkpoints", "model_best.pth")
    proc = run_cli("main.py", *common(tmp_path, "--prune-rate", "0.3", "--task", "search", "--pretrained", ckpt))
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, dense = scores(full)
    _, rtt = scores(run_dir(tmp_path, "search"))
    assert torch.equal(dense["conv1.weight"], rtt["conv1.weight"]), "an RTT keeps the trained weights"
    assert dense["bn1.running_mean"].abs().sum() > 0


@pytest.mark.parametrize("attack", ["fgsm", "fgsm-rs", "free", "None"])
def test_other_training_attacks_run(tmp_path, attack):
    out = main_entry.main(common(tmp_path, "--prune-rate", "0.3", "--attack_type", attack, "--n_repeats", "2",
                                 "--low-data", "0.05"))
    assert out["epochs_done"] == 1
    assert (out["robust_acc1"] is None) == (attack == "None")


def test_search_really_learns(tmp_path):
    """Natural edge-popup search at k=0.3 on Digits: far above the 10% of chance."""
    out = main_entry.main(common(tmp_path, "--prune-rate", "0.3", "--attack_type", "None", "--epochs", "3",
                                 "--width-mult", "0.25", "--low-data", "1", "--n_eval", "360",
                                 "--lr_policy", "cosine_lr", "--init", "signed_constant", "--val_every", "3"))
    assert out["natural_acc1"] > 60, out


def without(argv, *flags):
    """``argv`` without the given flags and their values."""
    out, skip = [], False
    for a in argv:
        if skip or a in flags:
            skip = not skip and a in flags
            continue
        out.append(a)
    return out


def test_evaluate_an_exported_ticket_takes_k_and_width_from_it(searched, tmp_path):
    """-e needs no --prune-rate / --width-mult (the checkpoint has them); the ticket file
    (tickets.py export) evaluates exactly like the checkpoint; a disagreeing flag is an error."""
    from trainers.ticket_export import export
    from utils.errors import UserError
    run = run_dir(searched, "search")
    export(run, str(tmp_path / "ticket.pth"))
    base = without(common(tmp_path), "--width-mult", "--attack_iters") + ["-e", "--attack_iters", "1"]
    from_ckpt = main_entry.main(base + ["--pretrained", os.path.join(run, "checkpoints", "model_best.pth")])
    from_ticket = main_entry.main(base + ["--pretrained", str(tmp_path / "ticket.pth")])
    assert from_ckpt["prune_rate"] == from_ticket["prune_rate"] == 0.3
    assert (from_ckpt["natural_acc1"], from_ckpt["robust_acc1"]) == (from_ticket["natural_acc1"],
                                                                     from_ticket["robust_acc1"])
    with pytest.raises(UserError, match=r"--width-mult 0.25 \(given\) vs 0.125 \(checkpoint\)"):
        main_entry.main(base + ["--width-mult", "0.25", "--pretrained", str(tmp_path / "ticket.pth")])
