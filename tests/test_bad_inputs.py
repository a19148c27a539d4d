"""Bad input through the real CLI: exit 2, one 'error:' line, no traceback, no checkpoint written.

Every row runs an entry script in a child process with its own --log-dir. The
children are forked from one process that has already imported the libraries
(tests/cli_fork.py): each still runs the script file as ``__main__`` with the
row's argv and real stdout/stderr, but skips the ~3 s torch start-up. Rows
marked ``no_run`` must fail before the run directory is even created.
"""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from models import build_model
from tests.helpers import ROOT, tiny_model
from utils.config import parse_config

HAS_TEST_TRANS = os.path.exists(os.path.join(ROOT, "test_trans.py"))
TINY = ["--set", "Digits", "--arch", "cResNet18", "--width-mult", "0.125", "-b", "64", "--low-data", "0.1",
        "--n_eval", "16", "--epochs", "1", "--seed", "0", "--prune-rate", "0.3", "--workers", "0", "--name", "bad"]
TRAIN_ONLY = ("--low-data", "--epochs")  # test_trans.py does not take them: its own parser refuses them
TINY_TRANS = [a for i, a in enumerate(TINY) if a not in TRAIN_ONLY and (i == 0 or TINY[i - 1] not in TRAIN_ONLY)]
RUN = os.path.join("no_config", "bad", "prune_rate=0.3", "search", "width_mult=0.125")

# id, script, arguments after TINY ({f} = the fixture folder), text the error must contain, no run dir
ROWS = [
    ("yaml_unknown_key", "main.py", ["--config", "{f}/unknown_key.yaml"], "unknown key 'bogus_key'", True),
    ("yaml_wrong_type", "main.py", ["--config", "{f}/wrong_type.yaml"], "key 'epochs' has value 'many'", True),
    ("yaml_missing", "main.py", ["--config", "{f}/nowhere.yaml"], "not found", True),
    ("flag_wrong_type", "main.py", ["--epochs", "abc"], "invalid int value: 'abc'", True),
    ("k_above_one", "main.py", ["--prune-rate", "1.5"], "must be in (0, 1], got 1.5", True),
    ("k_zero", "main.py", ["--prune-rate", "0"], "must be in (0, 1], got 0", True),
    ("unknown_arch", "main.py", ["--arch", "NoSuchNet"], "unknown architecture 'NoSuchNet'", True),
    ("unknown_arch_train_full", "train_full.py", ["--arch", "NoSuchNet"], "unknown architecture", True),
    ("unknown_conv", "main.py", ["--conv_type", "NoConv"], "unknown conv type 'NoConv'", True),
    ("unknown_bn", "main.py", ["--bn-type", "NoBN"], "unknown bn type 'NoBN'", True),
    ("unknown_init", "main.py", ["--init", "nope"], "unknown init 'nope'", True),
    ("unknown_lr_policy", "main.py", ["--lr_policy", "nope"], "unknown lr policy 'nope'", True),
    ("unknown_dataset", "main.py", ["--set", "NoSet"], "unknown dataset 'NoSet'", True),
    ("unknown_trainer", "main.py", ["--trainer", "nope"], "unknown trainer 'nope'", True),
    ("unknown_optimizer", "main.py", ["--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'", True),
    ("missing_dataset_path", "main.py", ["--set", "CIFAR10", "--data", "{f}/no_data"], "CIFAR10 not found", True),
    ("pretrained_truncated", "main.py", ["--pretrained", "{f}/truncated.pth"], "corrupt or truncated", True),
    ("resume_truncated", "main.py", ["--resume", "{f}/truncated.pth"], "corrupt or truncated", True),
    ("resume_not_a_checkpoint", "main.py", ["--resume", "{f}/text.pth"], "corrupt or truncated", True),
    ("pretrained_other_arch", "main.py", ["--pretrained", "{f}/other_arch.pth"], "saved from arch 'Conv2'", True),
    ("resume_other_arch_bare", "main.py", ["--resume", "{f}/bare_other_arch.pth"], "does not match the model", True),
    ("pretrained_other_classes", "main.py", ["--pretrained", "{f}/five_classes.pth"], "wrong shape", True),
    ("pretrained_runs_code", "main.py", ["--pretrained", "{f}/evil.pth"], "refused: loading it would run code", True),
    ("resume_runs_code", "main.py", ["--resume", "{f}/evil.pth"], "refused: loading it would run code", True),
    ("resume_missing", "main.py", ["--resume", "{f}/missing.pth"], "not found", True),
    ("resume_folder", "main.py", ["--resume", "{f}"], "is not a file", True),
    ("evaluate_without_pretrained", "main.py", ["--evaluate"], "--evaluate needs --pretrained", True),
    # an earlier run's model_latest.pth got truncated: the run dir exists, nothing may be added to it
    ("automatic_resume_truncated", "main.py", ["--automatic_resume", "--log-dir", "{f}/old_run"],
     "corrupt or truncated", False),
    pytest.param("test_trans_no_checkpoints", "test_trans.py", ["--pretrained", "{f}/empty", "--all_sources"],
                 "no checkpoints", False,
                 marks=pytest.mark.skipif(not HAS_TEST_TRANS, reason="test_trans.py not written yet")),
    # attack settings: out of range, or a flag the chosen mode would ignore (checked before any file is written)
    ("main_epsilon_negative", "main.py", ["--attack_type", "pgd", "--epsilon", "-8"], "--epsilon is in 0-255", True),
    ("main_epsilon_above_255", "main.py", ["--attack_type", "pgd", "--epsilon", "256"], "got 256", True),
    ("main_aa_steps_zero", "main.py", ["--attack_type", "pgd", "--eval_attack", "autoattack", "--aa_steps", "0"],
     "--aa_steps must be at least 1, got 0", True),
    ("main_eval_attack_without_attack", "main.py", ["--eval_attack", "autoattack"],
     "--eval_attack would be ignored: main.py measures robust accuracy only with --attack_type", True),
    ("main_eot_samples", "main.py", ["--attack_type", "pgd", "--eot_samples", "4"],
     "--eot_samples would be ignored: it is a test_trans.py flag (main.py does not take it)", True),
    ("main_r2s_flag", "main.py", ["--r2s"], "--r2s would be ignored: it is a test_trans.py flag", True),
    ("main_val_split_one", "main.py", ["--val_split", "1"], "--val_split is the fraction", True),
    ("trans_epsilon_negative", "test_trans.py", ["--pretrained", "{f}/empty", "--all_sources", "--epsilon", "-8"],
     "--epsilon is in 0-255 pixel units (8 means 8/255), got -8", True),
    ("trans_eot_samples_zero", "test_trans.py", ["--pretrained", "{f}/empty", "--r2s", "--eot_samples", "0"],
     "--eot_samples must be at least 1, got 0", True),
    ("trans_eot_steps_zero", "test_trans.py", ["--pretrained", "{f}/empty", "--r2s", "--eot_steps", "0"],
     "--eot_steps must be at least 1, got 0", True),
    ("trans_eval_passes_zero", "test_trans.py", ["--pretrained", "{f}/empty", "--r2s", "--eval_passes", "0"],
     "--eval_passes must be at least 1, got 0", True),
    ("trans_aa_steps_zero", "test_trans.py", ["--pretrained", "{f}/empty", "--all_sources", "--eval_attack",
                                               "autoattack", "--aa_steps", "0"], "--aa_steps must be at least 1", True),
    ("trans_eot_without_r2s", "test_trans.py", ["--pretrained", "{f}/empty", "--all_sources", "--eot_samples", "5",
                                                 "--eval_passes", "2"],
     "--eot_samples would be ignored: it is used only with --r2s; --eval_passes would be ignored", True),
    ("trans_aa_steps_with_pgd", "test_trans.py", ["--pretrained", "{f}/empty", "--all_sources", "--aa_steps", "50"],
     "--aa_steps would be ignored: it is used only with --eval_attack autoattack", True),
    ("trans_aa_queries_zero", "test_trans.py", ["--pretrained", "{f}/empty", "--all_sources", "--eval_attack",
                                                 "autoattack", "--aa_queries", "0"],
     "--aa_queries must be at least 1, got 0", True),
    ("trans_aa_queries_with_pgd", "test_trans.py", ["--pretrained", "{f}/empty", "--all_sources", "--aa_queries",
                                                     "100"],
     "--aa_queries would be ignored: it is used only with --eval_attack autoattack", True),
    ("trans_val_split", "test_trans.py", ["--pretrained", "{f}/empty", "--all_sources", "--val_split", "0.1"],
     "--val_split would be ignored", True),
    # a [0, 1] radius typed where 1/255 units are expected; amp that test_trans.py would not apply
    ("main_epsilon_fraction", "main.py", ["--attack_type", "pgd", "--epsilon", "0.03"],
     "--epsilon is in 1/255 units: 0.03 = 0.03/255; did you mean 8?", True),
    ("trans_epsilon_fraction", "test_trans.py", ["--pretrained", "{f}/empty", "--r2s", "--epsilon", "0.031"],
     "did you mean 8? (pass --epsilon-units unit", True),
    ("trans_amp", "test_trans.py", ["--pretrained", "{f}/empty", "--all_sources", "--amp", "bf16"],
     "--amp would be ignored: test_trans.py runs every attack and evaluation in fp32", True),
    ("trans_aa_version_with_pgd", "test_trans.py", ["--pretrained", "{f}/empty", "--all_sources", "--aa_version",
                                                     "rand"], "--aa_version would be ignored", True),
]


class CreatesMarker:
    """Unpickling this would create ``marker``: it exists iff a checkpoint's code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_fixture_files(folder):
    (folder / "unknown_key.yaml").write_text("epochs: 1\nbogus_key: 3\n")
    (folder / "wrong_type.yaml").write_text("epochs: many\n")
    (folder / "text.pth").write_text("this is not a checkpoint\n")
    (folder / "empty").mkdir()
    torch.save({"arch": "cResNet18", "state_dict": {}, "x": CreatesMarker(folder / "CODE_RAN")}, folder / "evil.pth")
    good = {"arch": "cResNet18", "epoch": 1, "state_dict": tiny_model().state_dict()}
    torch.save(good, folder / "good.pth")
    (folder / "truncated.pth").write_bytes((folder / "good.pth").read_bytes()[:5000])
    conv2 = build_model(parse_config(["--arch", "Conv2", "--prune-rate", "0.3", "--width-mult", "0.125"]), 10)
    torch.save({"arch": "Conv2", "state_dict": conv2.state_dict()}, folder / "other_arch.pth")
    torch.save(conv2.state_dict(), folder / "bare_other_arch.pth")
    torch.save({"arch": "cResNet18", "state_dict": tiny_model(num_classes=5).state_dict()},
               folder / "five_classes.pth")
    old = folder / "old_run" / RUN / "checkpoints"
    old.mkdir(parents=True)
    (old / "model_latest.pth").write_bytes((folder / "good.pth").read_bytes()[:3000])


def files_under(folder):
    return {os.path.relpath(os.path.join(d, n), folder): os.path.getmtime(os.path.join(d, n))
            for d, _, names in os.walk(folder) for n in names}


def row_log_dir(folder, row_id, extra):
    """The --log-dir a row's run uses: its own one wins (argparse keeps the last)."""
    return extra[extra.index("--log-dir") + 1] if "--log-dir" in extra else str(folder / "logs" / row_id)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_inputs")
    write_fixture_files(folder)
    before = files_under(folder)
    rows = [r.values if hasattr(r, "values") else r for r in ROWS]
    rows = [r for r in rows if r[1] != "test_trans.py" or HAS_TEST_TRANS]
    jobs = []
    for row_id, script, extra, _, _ in rows:
        extra = [a.format(f=folder) for a in extra]
        base = TINY_TRANS if script == "test_trans.py" else TINY
        jobs.append({"script": script, "args": base + ["--log-dir", str(folder / "logs" / row_id)] + extra,
                     "stdout": str(folder / f"{row_id}.out"), "stderr": str(folder / f"{row_id}.err"),
                     "timeout": 120, "log_dir": row_log_dir(folder, row_id, extra)})
    (folder / "jobs.json").write_text(json.dumps(jobs))
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    server = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "cli_fork.py"), str(folder / "jobs.json")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert server.returncode == 0, server.stderr[-3000:]
    codes = json.loads(server.stdout.strip().splitlines()[-1])
    results = {}
    for (row_id, *_), job, code in zip(rows, jobs, codes):
        with open(job["stdout"]) as out, open(job["stderr"]) as err:
            results[row_id] = (job["log_dir"], SimpleNamespace(returncode=code, stdout=out.read(), stderr=err.read()))
    return folder, before, results


@pytest.mark.parametrize("row_id, script, extra, expected, no_run", ROWS, ids=[
    r.values[0] if hasattr(r, "values") else r[0] for r in ROWS])
def test_bad_input_is_one_line_exit_2_and_writes_no_checkpoint(outcomes, row_id, script, extra, expected, no_run):
    folder, before, results = outcomes
    log_dir, proc = results[row_id]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert proc.stdout == ""
    assert not (folder / "CODE_RAN").exists()  # no checkpoint's pickled code ever ran
    if no_run:
        assert not os.path.exists(log_dir), f"{row_id} created {sorted(files_under(log_dir))}"
    after = files_under(log_dir) if os.path.exists(log_dir) else {}
    old = {os.path.relpath(os.path.join(folder, p), log_dir): t for p, t in before.items()}
    written = [p for p in after if p.endswith(".pth") and old.get(p) != after[p]]
    assert written == [], f"checkpoints written: {written}"

