"""No run is ever overwritten (issue 19, "Why" 1): the README's RTT search after the RST search
with the same --name, rerunning a finished command, -e on a training run's folder, and a run
stopped by Ctrl-C before its first checkpoint. In-process runs of 1 epoch on a few digits."""
import hashlib
import json
import logging
import os
import re

import pytest

import main as main_entry
import train_full as train_full_entry
from utils.errors import cli_main

FLAGS = ["--set", "Digits", "--arch", "cResNet18", "--width-mult", "0.125", "-b", "64", "--low-data", "0.1",
         "--n_eval", "16", "--epochs", "1", "--val_every", "1", "--seed", "0", "--workers", "0",
         "--attack_type", "pgd", "--attack_iters", "1", "--name", "exp_name"]


def run_dir(root, name="exp_name", k="0.3", task="search"):
    return os.path.join(str(root), "no_config", name, f"prune_rate={k}", task, "width_mult=0.125")


def snapshot(folder):
    """{relative path: sha256} of every file under ``folder``."""
    out = {}
    for top, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(top, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture
def rst_log(caplog):
    logger = logging.getLogger("rst")  # does not propagate to the root logger caplog watches
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture(scope="module")
def rst(tmp_path_factory):
    """The README's first command: an RST search, --name exp_name, k = 0.3."""
    root = tmp_path_factory.mktemp("runs")
    main_entry.main(FLAGS + ["--log-dir", str(root), "--prune-rate", "0.3", "--task", "search"])
    return root


def test_rtt_search_with_the_rsts_name_goes_to_a_sibling_and_ft_still_takes_the_rst(rst, rst_log, capsys):
    logs = ["--log-dir", str(rst)]
    before = snapshot(run_dir(rst))
    train_full_entry.main(FLAGS + logs)
    dense = os.path.join(run_dir(rst, k="1.0"), "checkpoints", "model_best.pth")
    capsys.readouterr()
    rtt = main_entry.main(FLAGS + logs + ["--prune-rate", "0.3", "--task", "search", "--pretrained", dense])
    assert snapshot(run_dir(rst)) == before, "the RST's run must stay byte for byte"
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == rtt  # the last stdout line: JSON
    assert os.path.isfile(os.path.join(run_dir(rst, "exp_name-2"), "results.json"))
    assert f"run: {run_dir(rst, 'exp_name-2')} (not {run_dir(rst)}: it holds a run with other settings" \
        in rst_log.text and "pretrained: None (run) vs" in rst_log.text
    main_entry.main(FLAGS + logs + ["--prune-rate", "0.3", "--task", "ft_inherit"])
    best = os.path.join(run_dir(rst), "checkpoints", "model_best.pth")
    assert f"loaded weights from {best}" in rst_log.text, "ft_* without --pretrained takes the RST"
    assert snapshot(run_dir(rst)) == before


def test_rerun_of_a_finished_run_touches_nothing_and_force_redoes_it_in_a_sibling(rst, capsys):
    logs = ["--log-dir", str(rst), "--prune-rate", "0.3", "--task", "search"]
    before, tree = snapshot(run_dir(rst)), sorted(os.listdir(os.path.join(str(rst), "no_config")))
    capsys.readouterr()
    assert cli_main(main_entry.main, FLAGS + logs)["already_finished"] is True  # returns: exit code 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["already_finished"] and out["run_dir"] == run_dir(rst)
    assert snapshot(run_dir(rst)) == before and sorted(os.listdir(os.path.join(str(rst), "no_config"))) == tree
    forced = main_entry.main(FLAGS + logs + ["--force"])
    assert "already_finished" not in forced and snapshot(run_dir(rst)) == before
    new = [n for n in os.listdir(os.path.join(str(rst), "no_config")) if n not in tree]
    assert len(new) == 1 and new[0].startswith("exp_name-")
    assert os.path.isfile(os.path.join(run_dir(rst, new[0]), "results.json"))


def test_evaluate_writes_its_own_record_and_leaves_the_training_run_alone(rst, capsys):
    before = snapshot(run_dir(rst))
    best = os.path.join(run_dir(rst), "checkpoints", "model_best.pth")
    out = main_entry.main(FLAGS + ["--log-dir", str(rst), "--prune-rate", "0.3", "-e", "--pretrained", best])
    eval_dir = os.path.join(run_dir(rst), "eval")
    assert {k: v for k, v in snapshot(run_dir(rst)).items() if not k.startswith("eval")} == before
    assert os.path.dirname(out["record"]) == eval_dir
    assert re.fullmatch(r"\d{8}T\d{6}Z(-\d+)?\.json", os.path.basename(out["record"])), "named by its UTC time"
    with open(out["record"]) as fh:
        record = json.load(fh)
    with open(best, "rb") as fh:
        assert record["checkpoint_sha256"] == hashlib.sha256(fh.read()).hexdigest()
    assert record["eval_protocol"]["attack"] == "pgd" and record["eval_protocol"]["steps"] == 20
    assert record["time"] and record["natural_acc1"] == out["natural_acc1"]
    again = main_entry.main(FLAGS + ["--log-dir", str(rst), "--prune-rate", "0.3", "-e", "--pretrained", best])
    assert again["record"] != out["record"] and len(os.listdir(eval_dir)) == 2  # never overwritten


def test_ctrl_c_before_the_first_checkpoint_leaves_no_folder(tmp_path, monkeypatch):
    import trainers.loop as loop

    def interrupted(*args, **kwargs):  # Ctrl-C while the run starts (after its folder exists)
        assert os.path.isfile(os.path.join(run_dir(tmp_path), "settings.txt"))
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_initial", interrupted)
    with pytest.raises(SystemExit) as exc:
        cli_main(main_entry.main, FLAGS + ["--log-dir", str(tmp_path), "--prune-rate", "0.3"])
    assert exc.value.code == 130
    assert not os.path.exists(os.path.join(str(tmp_path), "no_config")), "no half-made run is left"


def write_run(folder, cfg, checkpoint=False, finished=False):
    """A run folder as main.py leaves it: settings.txt, maybe model_latest.pth and results.json."""
    from utils.run_dir import config_dict
    os.makedirs(os.path.join(folder, "checkpoints"), exist_ok=True)
    with open(os.path.join(folder, "settings.txt"), "w") as fh:
        fh.writelines(f"{k}: {v}\n" for k, v in config_dict(cfg).items())
    if checkpoint:
        open(os.path.join(folder, "checkpoints", "model_latest.pth"), "wb").close()
    if finished:
        with open(os.path.join(folder, "results.json"), "w") as fh:
            json.dump({"epochs_done": 1}, fh)


@pytest.mark.parametrize("stored, now, state, expected", [
    ([], [], "none", "exp_name"),                                   # same settings, nothing to lose: reused
    ([], [], "started", "exp_name-2"),                              # unfinished, no resume flag: kept
    ([], ["--automatic_resume"], "started", "exp_name"),            # continued
    ([], ["--workers", "3", "--automatic_resume"], "started", "exp_name"),  # a key that changes no number
    (["--n_eval", "8"], ["--automatic_resume"], "finished", "exp_name"),    # resumed: re-measures
    (["--n_eval", "8"], [], "finished", "exp_name-2"),              # not resumed: another run
    (["--epochs", "2"], ["--automatic_resume"], "finished", "exp_name"),   # a finished run extended
    (["--lr", "0.2"], ["--automatic_resume"], "started", "exp_name-2"),     # training differs: never reused
    ([], ["--force"], "finished", "exp_name-2"),
    ([], [], "finished", "finished"),
    (["--seed", "7", "--seed_drawn"], [], "finished", "finished"),  # no --seed either time (a drawn seed)
])
def test_run_folder_rule(tmp_path, stored, now, state, expected):
    from utils.config import parse_config
    from utils.run_dir import run_dir_for
    from utils.run_guard import choose_run_dir
    base = FLAGS + ["--log-dir", str(tmp_path), "--prune-rate", "0.3"]
    drawn = "--seed_drawn" in stored  # as a run without --seed records it (cfg.seed_drawn)
    old = parse_config([a for a in base + stored if a != "--seed_drawn"])
    if drawn:
        old.seed_drawn = True
    if drawn or "--seed" in now:
        base = [a for i, a in enumerate(base) if a != "--seed" and base[i - 1] != "--seed"]
    write_run(run_dir_for(old, "search"), old, checkpoint=state != "none", finished=state == "finished")
    where = choose_run_dir(parse_config(base + now), "search")
    assert ("finished" if where.finished else where.name) == expected
    assert where.dir == run_dir_for(old, "search", name=where.name)


def test_transfer_rerun_touches_nothing_and_other_settings_go_to_a_sibling(rst, tmp_path):
    """test_trans.py (the README's transfer command) keeps a finished report: the same command
    again says so, other settings (here --epsilon) write into ``<name>-2``."""
    import test_trans as trans_entry
    tickets = tmp_path / "ckpt"
    tickets.mkdir()
    os.symlink(os.path.join(run_dir(rst), "checkpoints", "model_best.pth"), tickets / "cResNet18_0.3.pth")
    base = ["--set", "Digits", "--n_eval", "8", "--seed", "0", "--workers", "0", "--attack_type", "pgd",
            "--name", "t", "--log-dir", str(tmp_path / "runs"), "--pretrained", str(tickets / "cResNet18_0.3.pth")]
    first = trans_entry.main(base)
    done = os.path.join(str(tmp_path / "runs"), "no_config", "t", "prune_rate=0.3", "transfer")
    before = snapshot(done)
    assert "transfer_matrix.json" in before and "already_finished" not in first
    again = trans_entry.main(base)
    assert again["already_finished"] is True and snapshot(done) == before
    other = trans_entry.main(base + ["--epsilon", "4"])
    assert "already_finished" not in other and snapshot(done) == before
    sibling = os.path.join(str(tmp_path / "runs"), "no_config", "t-2", "prune_rate=0.3", "transfer")
    assert os.path.isfile(os.path.join(sibling, "transfer_matrix.json"))
