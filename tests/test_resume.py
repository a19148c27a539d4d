"""Crash-safe resume: kill -9 and SIGTERM of a real CLI search, resumed, equal an uninterrupted run.

The runs are tiny (Digits, width 0.125, 5 batches of 64 per epoch, PGD-1
training, PGD-20 validation on 32 examples). Processes are stopped from the
test by watching their progress bar on stderr; no hook exists in library code.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from data import build_dataset, make_loader
from tests.helpers import ROOT
from trainers.state import TrainState
from utils.checkpoint import TMP_PREFIX, atomic_save, load_checkpoint, remove_stale_temporaries
from utils.config import parse_config
from utils.errors import UserError
from utils.seed import get_rng_state, set_rng_state

BATCHES = 5  # per epoch: 0.2 * 1437 = 287 training digits in batches of 64


def args(log_dir, *extra):
    return ["--set", "Digits", "--arch", "cResNet18", "--width-mult", "0.125", "-b", "64", "--low-data", "0.2",
            "--n_eval", "32", "--epochs", "2", "--val_every", "1", "--seed", "0", "--attack_type", "pgd",
            "--attack_iters", "1", "--prune-rate", "0.3", "--lr_policy", "cosine_lr", "--workers", "0",
            "--name", "r", "--log-dir", str(log_dir), "--progress", "on", *extra]


def run_dir(log_dir):
    return os.path.join(str(log_dir), "no_config", "r", "prune_rate=0.3", "search", "width_mult=0.125")


def cli_env():
    # One OpenMP thread: as fast for these tiny tensors, and no barrier stalls on a busy machine.
    return dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def run_cli(*argv, timeout=300):
    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *map(str, argv)], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


class Watched:
    """A CLI process whose stderr (tqdm bars included) is collected as it comes."""

    def __init__(self, argv):
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), *argv], cwd=ROOT, env=cli_env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.chunks = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for chunk in iter(lambda: self.proc.stderr.read(1), ""):
            self.chunks.append(chunk)

    def text(self):
        return "".join(self.chunks)

    def wait_for(self, pattern, timeout=240):
        """Block until ``pattern`` appears on stderr (fails if the process ends first)."""
        regex, end = re.compile(pattern), time.time() + timeout
        while not regex.search(self.text()):
            assert self.proc.poll() is None, f"process ended before '{pattern}':\n{self.text()[-2000:]}"
            assert time.time() < end, f"timeout waiting for '{pattern}'"
            time.sleep(0.02)

    def finish(self, timeout=300):
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return rc


def after_batches(epoch, n):
    """tqdm bar of ``epoch`` showing at least ``n`` (1-9) finished batches."""
    return rf"epoch {epoch}:\s+\d+%\|[^|\r\n]*\| [{n}-9]/{BATCHES}"


def final_state(log_dir):
    """(model_latest, model_best, results.json without train_seconds) of a finished run."""
    folder = os.path.join(run_dir(log_dir), "checkpoints")
    with open(os.path.join(run_dir(log_dir), "results.json")) as fh:
        results = json.load(fh)
    results.pop("train_seconds")
    return (load_checkpoint(os.path.join(folder, "model_latest.pth")),
            load_checkpoint(os.path.join(folder, "model_best.pth")), results)


def assert_same_run(got, want):
    (ckpt, best, results), (ref_ckpt, ref_best, ref_results) = got, want
    assert results == ref_results
    for mine, ref in ((ckpt, ref_ckpt), (best, ref_best)):
        assert set(mine["state_dict"]) == set(ref["state_dict"])
        for key, value in ref["state_dict"].items():
            assert torch.equal(mine["state_dict"][key], value), key
    for key in ("epoch", "history", "best_acc1", "best_train_acc1", "curr_acc1", "natural_acc1_at_best_robustness"):
        assert ckpt[key] == ref_ckpt[key], key
    assert torch.equal(ckpt["rng"]["torch"], ref_ckpt["rng"]["torch"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("reference")
    proc = run_cli(*args(log_dir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return final_state(log_dir)


def test_kill_9_mid_epoch_then_automatic_resume_matches_uninterrupted(uninterrupted, tmp_path):
    run = Watched(args(tmp_path))
    run.wait_for(after_batches(1, 1))  # epoch 0's checkpoint is written, epoch 1 is under way
    os.kill(run.proc.pid, signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL
    killed = load_checkpoint(os.path.join(run_dir(tmp_path), "checkpoints", "model_latest.pth"))
    assert (killed["epoch"], killed["batches_done"]) == (1, 0)
    assert not os.path.exists(os.path.join(run_dir(tmp_path), "results.json"))

    proc = run_cli(*args(tmp_path, "--automatic_resume"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resumed from" in proc.stderr
    assert_same_run(final_state(tmp_path), uninterrupted)


def test_sigterm_mid_epoch_saves_position_and_resume_matches_uninterrupted(uninterrupted, tmp_path):
    run = Watched(args(tmp_path))
    run.wait_for(after_batches(0, 1))  # no checkpoint yet: SIGTERM must write the first one
    os.kill(run.proc.pid, signal.SIGTERM)
    assert run.finish() == 0, run.text()[-2000:]
    assert "SIGTERM: checkpoint saved at epoch 0" in run.text()
    assert "Traceback" not in run.text()
    ckpt_dir = os.path.join(run_dir(tmp_path), "checkpoints")
    saved = load_checkpoint(os.path.join(ckpt_dir, "model_latest.pth"))
    assert saved["epoch"] == 0 and 1 <= saved["batches_done"] <= BATCHES
    assert saved["epoch_totals"][0] == 64 * saved["batches_done"]  # examples seen so far
    assert not os.path.exists(os.path.join(run_dir(tmp_path), "results.json"))  # not finished
    assert not [n for n in os.listdir(ckpt_dir) if n.startswith(TMP_PREFIX)]

    proc = run_cli(*args(tmp_path, "--automatic_resume"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"at epoch 0 batch {saved['batches_done']}" in proc.stderr
    assert_same_run(final_state(tmp_path), uninterrupted)


def test_ctrl_c_mid_epoch_saves_exits_130_and_resume_matches_uninterrupted(uninterrupted, tmp_path):
    run = Watched(args(tmp_path))
    run.wait_for(after_batches(0, 1))  # no checkpoint yet: Ctrl-C must write the first one
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.finish() == 130, run.text()[-2000:]
    assert "SIGINT: checkpoint saved at epoch 0" in run.text() and "Traceback" not in run.text()
    saved = load_checkpoint(os.path.join(run_dir(tmp_path), "checkpoints", "model_latest.pth"))
    assert saved["epoch"] == 0 and 1 <= saved["batches_done"] <= BATCHES
    assert not os.path.exists(os.path.join(run_dir(tmp_path), "results.json"))

    proc = run_cli(*args(tmp_path, "--automatic_resume"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"at epoch 0 batch {saved['batches_done']}" in proc.stderr
    for bar in ("val natural", "val pgd"):
        assert re.search(bar + r": +\d+%\|", proc.stderr), f"validation shows a bar per batch: {bar}"
    assert len(re.findall(r"epoch \d of 2: lr ", proc.stderr)) == 2  # one summary line per epoch
    assert json.loads(proc.stdout.strip().splitlines()[-1])["epochs_done"] == 2  # last line: JSON
    assert_same_run(final_state(tmp_path), uninterrupted)


def test_save_every_n_epochs_plus_last(tmp_path):
    # Validation after epochs 0 (0 % 9 == 0: the first best, saved) and 3 (the last) only,
    # so the save with 3 epochs done is --save_every's alone.
    proc = run_cli(*args(tmp_path, "--one-batch", "--epochs", "4", "--val_every", "9",
                                    "--save_every", "3"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = [int(e) for e in re.findall(r"checkpoint saved: (\d+) epochs done", proc.stderr)]
    assert saved == [1, 3, 4]


# ---------------------------------------------------------------- pieces, in process

def test_skipped_loader_yields_the_rest_of_the_epoch_and_draws_no_global_rng():
    cfg = parse_config(["--low-data", "0.2"])
    train = build_dataset(cfg).train
    torch.manual_seed(3)
    full = [y for _, y in make_loader(train, 64, True, cfg, epoch=4, seed=7)]
    torch.manual_seed(3)
    full_again = [y for _, y in make_loader(train, 64, True, cfg, epoch=4, seed=7)]
    assert all(torch.equal(a, b) for a, b in zip(full, full_again))
    loader = make_loader(train, 64, True, cfg, epoch=4, seed=7, skip_batches=2)
    before = torch.get_rng_state()
    iter(loader)  # starting an iteration must not consume the global torch RNG
    assert torch.equal(before, torch.get_rng_state())
    rest = [y for _, y in loader]
    assert len(rest) == len(full) - 2
    assert all(torch.equal(a, b) for a, b in zip(rest, full[2:]))


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    atomic_save({"rng": get_rng_state()}, tmp_path / "r.pth")
    want = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(str(tmp_path / "r.pth"))["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(want[0], got[0]) and (want[1] == got[1]).all() and want[2] == got[2]
    with pytest.raises(UserError, match="random-number state is malformed"):
        set_rng_state({"python": 3})


def test_atomic_save_failure_keeps_previous_file_and_no_temporary(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    path = tmp_path / "model_latest.pth"
    atomic_save({"epoch": 1}, path)
    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"epoch": 2, "bad": Unpicklable()}, path)
    assert load_checkpoint(str(path))["epoch"] == 1
    assert os.listdir(tmp_path) == ["model_latest.pth"]
    (tmp_path / f"{TMP_PREFIX}abc.pth").write_bytes(b"half a checkpoint")
    remove_stale_temporaries(str(tmp_path))
    assert os.listdir(tmp_path) == ["model_latest.pth"]


def test_train_state_position_is_validated():
    state = TrainState(epoch=3, batches_done=2, epoch_totals=[128.0, 1.0, 2.0, 3.0])
    back = TrainState.from_checkpoint(state.as_dict())
    assert back.mid_epoch() == {"batches": 2, "totals": [128.0, 1.0, 2.0, 3.0]}
    back.end_epoch()
    assert (back.epoch, back.mid_epoch()) == (4, None)
    with pytest.raises(UserError, match="damaged"):
        TrainState.from_checkpoint({"epoch": "3"})
    with pytest.raises(UserError, match="epoch_totals"):
        TrainState.from_checkpoint({"epoch": 3, "batches_done": 2})


def test_mid_epoch_position_needs_the_same_data_order():
    from trainers.state import same_data_order
    from utils.run_dir import config_dict

    cfg = parse_config(["--seed", "3", "-b", "64"])
    ckpt = {"config": config_dict(cfg)}
    assert same_data_order(ckpt, cfg, 1)
    assert not same_data_order(ckpt, cfg, 2)  # other process count: other shards
    assert not same_data_order(ckpt, parse_config(["--seed", "4", "-b", "64"]), 1)
    assert not same_data_order(ckpt, parse_config(["--seed", "3", "-b", "32"]), 1)
    assert not same_data_order({}, cfg, 1)  # unknown order: restart the epoch
