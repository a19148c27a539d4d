"""The benches run end to end and print the lines the docs (docs/speed.md) and the issue quote
(no timing is asserted: numbers depend on the machine)."""
import os
import subprocess
import sys

import pytest

from bench import run_epoch
from tests.helpers import ROOT

TINY = ["--threads", "1", "--width-mult", "0.125", "--batch", "8", "--n-train", "8", "--n-eval", "8",
        "--iters", "1", "--warm-epochs", "0", "--reps", "1"]


def test_run_epoch_reports_ratios_and_both_validations(capsys):
    run_epoch.main(TINY)
    out = capsys.readouterr().out
    for line in ("epoch search/dense = ", "CPU-time epoch search/dense = ", "train-only search/dense = ",
                 "validation speed-up = ", "validation speed-up (dense model) = ", "after compaction",
                 "images/s", "accuracies identical in both modes: yes"):
        assert line in out, f"missing {line!r} in:\n{out}"


def test_run_epoch_report_arithmetic(capsys):
    times = {"train": [(2.0, 2.0)], "val": {False: [(1.5, 1.5)], True: [(1.0, 1.0)]},
             "acc": {False: [(90.0, 40.0)], True: [(90.0, 40.0)]}}
    args = run_epoch.parse_args(["--reps", "1"])
    run_epoch.report(args, run_epoch.torch.device("cpu"), {"search": times, "dense": times}, (False, True), 8, 8)
    out = capsys.readouterr().out
    assert "epoch search/dense = 1.000" in out and "validation speed-up = 1.500" in out
    assert "validation share of the search epoch: 43% before compaction, 33% after compaction" in out
    assert "PGD-20 fools 60.0% of the validation examples" in out


@pytest.mark.skipif(sys.platform != "linux", reason="bash and coreutils timeout")
def test_gpu_shims_stand_in_for_missing_packages(tmp_path):
    """The stand-ins gpu_check.sh relies on when a GPU machine lacks packages: a preset
    parses, Digits loads (synthetic), and the tensorboard writer is a no-op."""
    shims = tmp_path / "shims"
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_shims.py"), str(shims),
                    "--force", "yaml,tqdm,sklearn,tensorboard"], check=True, capture_output=True)
    code = ("import yaml, tqdm, sklearn.datasets\n"
            "from torch.utils.tensorboard import SummaryWriter\n"
            "assert 'shims' in yaml.__file__ and 'shims' in tqdm.__file__\n"
            "from utils.config import parse_config\n"
            "cfg = parse_config(['--config', 'config_rst/demo-digits.yaml'])\n"
            "assert cfg.width_mult == 0.25 and cfg.freeze_weights is True and cfg.set == 'Digits'\n"
            "d = sklearn.datasets.load_digits()\n"
            "assert d.images.shape == (1797, 8, 8) and sorted(set(d.target.tolist())) == list(range(10))\n"
            "SummaryWriter('x').add_scalar('a', 1.0, 0)\n"
            "assert list(tqdm.tqdm([1, 2], desc='x')) == [1, 2]\n")
    env = dict(os.environ, PYTHONPATH=f"{shims}{os.pathsep}{ROOT}")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

