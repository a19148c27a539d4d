"""DistributedDataParallel through torchrun: 2 Gloo processes on CPU.

A short search on Digits runs ``main.py``'s code path under
``python -m torch.distributed.run --nproc_per_node=2`` (via tests/ddp_worker.py,
which only adds a per-rank checksum dump after training), then resumes it for
one more epoch. Both ranks must end bit-identical, rank 0 alone writes the run
(one results.json), and the sharded evaluation must count every example once.
"""
import glob
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from data import build_dataset, make_loader, subset
from models import build_model
from tests.helpers import ROOT
from evaluation.evaluate import evaluate
from utils.checkpoint import load_checkpoint
from utils.config import parse_config

N_EVAL = 33  # odd: a padding sampler would count one example twice over 2 ranks


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def args(log_dir, *extra):
    return ["--set", "Digits", "--arch", "cResNet18", "--width-mult", "0.125", "-b", "32", "--low-data", "0.07",
            "--n_eval", str(N_EVAL), "--val_every", "1", "--seed", "0", "--log-dir", str(log_dir),
            "--name", "t", "--workers", "0", "--attack_type", "pgd", "--attack_iters", "2", "--prune-rate", "0.3",
            "--lr", "0.5", "--lr_policy", "constant_lr", *extra]


def torchrun(tmp, dump, *main_args):
    os.makedirs(dump, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=ROOT, RST_DUMP_SCORES_DIR=str(dump), CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           os.path.join(ROOT, "tests", "ddp_worker.py"), *main_args]
    proc = subprocess.run(cmd, cwd=str(tmp), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [json.load(open(os.path.join(dump, f"rank{r}.json"))) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    return ranks


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    logs = tmp / "runs"
    first = torchrun(tmp, tmp / "dump1", *args(logs, "--epochs", "1"))
    first_files = sorted(os.path.relpath(p, logs) for p in glob.glob(str(logs / "**" / "*"), recursive=True)
                         if os.path.isfile(p))
    with open(glob.glob(str(logs / "**" / "results.json"), recursive=True)[0]) as fh:
        first_results = json.load(fh)
    ckpt_first = torch.load(glob.glob(str(logs / "**" / "model_latest.pth"), recursive=True)[0], weights_only=True)
    second = torchrun(tmp, tmp / "dump2", *args(logs, "--epochs", "2", "--automatic_resume"))
    return dict(tmp=tmp, logs=logs, first=first, second=second, first_results=first_results,
                ckpt_first=ckpt_first, first_files=first_files)


def differing(ranks):
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert set(a) == set(b)
    return [k for k in a if a[k] != b[k]]


def test_ranks_end_with_identical_scores(runs):
    for ranks in (runs["first"], runs["second"]):
        assert any(k.endswith("scores") for k in ranks[0]["state"])
        assert differing(ranks) == [], "parameters/buffers differ between ranks"
    # the search moved the scores (else identical scores would prove nothing)
    assert runs["first"][0]["state"] != runs["second"][0]["state"]


def test_only_rank0_writes_one_run(runs):
    logs = runs["logs"]
    names = [os.path.basename(p) for p in runs["first_files"]]
    assert names.count("results.json") == 1 and names.count("log.txt") == 1
    assert sum(n.startswith("events.out.tfevents.") for n in names) == 1, "one TensorBoard writer (rank 0)"
    assert sum(n.endswith(".pth") for n in names) == 2, "model_latest.pth and model_best.pth only"
    assert names.count("initial.state") == 1
    assert len(names) == 8, runs["first_files"]  # + settings.txt and the copied log
    results = glob.glob(str(logs / "**" / "results.json"), recursive=True)
    assert len(results) == 1
    with open(results[0]) as fh:
        res = json.load(fh)
    assert res["epochs_done"] == 2, "the second launch resumed at epoch 1 and trained one more"
    stray = [p for p in glob.glob(str(runs["tmp"] / "*")) if os.path.basename(p) not in ("runs", "dump1", "dump2")]
    assert stray == [], f"files written outside the run directory: {stray}"


def test_sharded_evaluation_counts_each_example_once(runs):
    """Rank 0's checkpoint evaluated in one process on the same N_EVAL examples
    gives exactly the natural accuracy the two ranks reported together."""
    cfg = parse_config(args(runs["logs"], "--epochs", "1"))
    data = build_dataset(cfg)
    model = build_model(cfg, data.info.num_classes, data.info.in_channels, data.info.image_size,
                        data.info.mean, data.info.std)
    model.load_state_dict(runs["ckpt_first"]["state_dict"])
    loader = make_loader(subset(data.val, N_EVAL), cfg.test_batch_size, False, cfg)
    natural = evaluate(model, loader, torch.device("cpu"))
    assert natural["acc1"] == pytest.approx(runs["first_results"]["natural_acc1"], abs=1e-9)
    # and the reported value is a multiple of 1/N_EVAL (no padded duplicates)
    correct = runs["first_results"]["natural_acc1"] * N_EVAL / 100
    assert correct == pytest.approx(round(correct), abs=1e-6)


@pytest.mark.parametrize("n, world", [(33, 2), (7, 3), (2, 4)])
def test_eval_shards_partition_without_padding(n, world):
    cfg = parse_config([])
    seen = []
    for rank in range(world):
        loader = make_loader(list(range(n)), 4, False, cfg, rank=rank, world_size=world)
        seen += [int(i) for batch in loader for i in batch]
    assert sorted(seen) == list(range(n))


def test_resume_checkpoint_loads_on_every_rank(runs):
    """The checkpoint holds rank 0's final state (BatchNorm statistics included), and the
    resumed launch continued from it: epoch 2 reached, and both ranks still agree after
    it (a rank that skipped the optimiser state, whose momentum DDP does not sync,
    would drift; see test_ranks_end_with_identical_scores)."""
    first_rank0 = runs["first"][0]["state"]
    from tests.ddp_worker import checksums
    cfg = parse_config(args(runs["logs"], "--epochs", "1"))
    data = build_dataset(cfg)
    model = build_model(cfg, data.info.num_classes, data.info.in_channels, data.info.image_size,
                        data.info.mean, data.info.std)
    model.load_state_dict(runs["ckpt_first"]["state_dict"])
    assert checksums(model) == first_rank0
    assert load_checkpoint(glob.glob(str(runs["logs"] / "**" / "model_latest.pth"), recursive=True)[0])["epoch"] == 2
