"""Safe loading: weights-only checkpoints, refused code-running pickles, safe YAML; numerical faults."""
import ast
import glob
import os
import pickle
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import ROOT, run_cli, tiny_model
from utils.checkpoint import load_checkpoint
from utils.errors import UserError


class CreatesMarker:
    """Unpickling this calls open(marker, 'w'): the file appears iff the pickle's code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_files(tmp_path):
    marker = tmp_path / "CODE_RAN"
    zipped = tmp_path / "evil_zip.pth"
    torch.save({"arch": "cResNet18", "state_dict": {}, "payload": CreatesMarker(marker)}, zipped)
    legacy = tmp_path / "evil_legacy.pth"
    for protocol, path in ((2, legacy), (4, tmp_path / "evil_legacy4.pth")):
        with open(path, "wb") as fh:
            pickle.dump({"state_dict": {}, "payload": CreatesMarker(marker)}, fh, protocol=protocol)
    return marker, [zipped, legacy, tmp_path / "evil_legacy4.pth"]


def one_line_error(proc):
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


def python_files():
    skip = (os.sep + ".git" + os.sep, os.sep + "runs" + os.sep)
    return [p for p in glob.glob(os.path.join(ROOT, "**", "*.py"), recursive=True) if not any(s in p for s in skip)]


def calls(path):
    with open(path) as fh:
        tree = ast.parse(fh.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name):
            yield node.func.value.id, node.func.attr, node


def test_every_torch_load_in_the_tree_is_weights_only():
    found = 0
    for path in python_files():
        for module, attr, node in calls(path):
            if (module, attr) == ("torch", "load"):
                found += 1
                flags = {k.arg: k.value for k in node.keywords}
                ok = isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True
                assert ok, f"{path}:{node.lineno}: torch.load without weights_only=True"
    assert found >= 1  # the scan sees utils/checkpoint.py's call


def test_yaml_is_only_read_with_the_safe_loader():
    unsafe = [(p, n.lineno) for p in python_files() for m, a, n in calls(p)
              if m == "yaml" and a in ("load", "load_all", "unsafe_load", "full_load", "unsafe_load_all")]
    assert unsafe == []


def test_code_running_pickles_are_refused_in_process(tmp_path):
    marker, files = malicious_files(tmp_path)
    # torch's safe unpickler names the forbidden global in zip and protocol-2 files; it
    # stops protocol-4 legacy pickles even earlier, at an opcode it does not support.
    for path, expected in zip(files, ("refused: loading it would run code (io.open)",) * 2 + ("not a weights-only",)):
        with pytest.raises(UserError) as info:
            load_checkpoint(str(path))
        assert "\n" not in str(info.value) and str(path) in str(info.value)
        assert expected in str(info.value)
    assert not marker.exists()


def test_code_running_pickle_is_refused_by_the_cli(tmp_path):
    """A genuine ``python main.py`` process (test_bad_inputs covers --resume and more)."""
    marker, files = malicious_files(tmp_path)
    proc = run_cli("main.py", "--set", "Digits", "--arch", "cResNet18", "--width-mult", "0.125",
                   "--prune-rate", "0.3", "--epochs", "1", "--log-dir", tmp_path / "runs", "--pretrained", files[0])
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "refused" in line and "evil_zip.pth" in line
    assert not marker.exists()
    assert not (tmp_path / "runs").exists()  # refused before the run directory is made


def test_truncated_and_garbage_checkpoints_are_refused(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"arch": "cResNet18", "state_dict": tiny_model().state_dict()}, good)
    data = good.read_bytes()
    assert load_checkpoint(str(good))["arch"] == "cResNet18"
    for n in (0, 7, 200, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.pth").write_bytes(data[:n])
        with pytest.raises(UserError, match="corrupt or truncated") as info:
            load_checkpoint(str(tmp_path / "cut.pth"))
        assert "\n" not in str(info.value)
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    (tmp_path / "noise.pth").write_bytes(bytes(range(256)) * 8)
    for name in ("text.pth", "noise.pth"):
        with pytest.raises(UserError, match="corrupt"):
            load_checkpoint(str(tmp_path / name))
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(str(tmp_path / "missing.pth"))


def test_non_finite_loss_stops_with_epoch_and_batch_and_keeps_last_good_checkpoint(tmp_path):
    # Dense training; lr 0.01 for epoch 0, then 1e28 (gamma 1e30 from epoch 1): the weights blow up.
    argv = [sys.executable, os.path.join(ROOT, "train_full.py"), "--set", "Digits", "--arch", "cResNet18",
            "--width-mult", "0.125", "-b", "64", "--low-data", "0.1", "--n_eval", "16", "--epochs", "3",
            "--val_every", "1", "--seed", "0", "--workers", "0", "--log-dir", str(tmp_path), "--lr", "0.01",
            "--lr_policy", "multistep_lr_imagenet", "--multistep_lr_adjust", "1", "--multistep_lr_gamma", "1e30"]
    latest = tmp_path / "no_config" / "default" / "prune_rate=1.0" / "search" / "width_mult=0.125" / \
        "checkpoints" / "model_latest.pth"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")  # no OpenMP stalls on a busy machine
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None and first is None:
        if latest.exists():
            first = latest.read_bytes()  # complete: written by rename
        time.sleep(0.02)
    _, err = proc.communicate(timeout=300)
    first = first or latest.read_bytes()
    assert proc.returncode == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: non-finite loss") and "epoch 1 batch" in last
    assert "Traceback" not in err
    assert latest.read_bytes() == first
    ckpt = load_checkpoint(str(latest))
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (latest.parent.parent / "results.json").exists()
