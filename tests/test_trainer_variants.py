"""--trainer lottery (dense weights first, then the search) and --trainer ss (L1 on sigmoid(scores))."""
import os

import pytest
import torch

import main as main_entry
import train_full as full_entry
from models import masked_layers
from tests.helpers import tiny_cfg, tiny_model
from trainers import lottery, ss
from trainers.loop import prepare, trainer_hook
from trainers.optim import build_criterion, build_optimizer
from trainers.tasks import setup_task
from trainers.train import TRAINERS, train_epoch
from utils.checkpoint import load_checkpoint
from utils.config import parse_config
from utils.distributed import DistContext
from utils.errors import UserError
from utils.run_dir import run_dir_for

torch.manual_seed(0)
BATCHES = [(torch.rand(16, 3, 32, 32), torch.arange(16) % 10) for _ in range(2)]
E2E = ["--set", "Digits", "--arch", "cResNet18", "--width-mult", "0.125", "-b", "64", "--low-data", "0.1",
       "--n_eval", "32", "--val_every", "1", "--seed", "0", "--workers", "0", "--prune-rate", "0.3"]


def searching(*extra):
    cfg = tiny_cfg(*extra)
    model = tiny_model(*extra)
    setup_task(model, cfg, "unused")
    trainer_hook(cfg, "prepare")(model, cfg)
    return cfg, model, build_optimizer(cfg, model)


def one_epoch(cfg, model, optimizer, epoch):
    seen = []
    hook = model.conv1.register_forward_pre_hook(lambda m, _: seen.append(m.prune_rate))
    TRAINERS.get(cfg.trainer)(model, BATCHES, optimizer, build_criterion(cfg), cfg, torch.device("cpu"), epoch,
                              progress=False)
    hook.remove()
    return set(seen)


def test_lottery_trains_dense_weights_then_searches():
    cfg, model, opt = searching("--trainer", "lottery", "--lottery_epochs", "1")
    trainable = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(m.weight) in trainable and id(m.scores) in trainable for m in masked_layers(model))
    w0, s0 = model.conv1.weight.detach().clone(), model.conv1.scores.detach().clone()
    assert one_epoch(cfg, model, opt, 0) == {1.0}  # dense phase: every weight kept
    w1 = model.conv1.weight.detach().clone()
    assert not torch.equal(w1, w0) and torch.equal(model.conv1.scores, s0)
    assert all(m.prune_rate == 0.3 for m in masked_layers(model)), "validation sees the ticket at k"
    assert one_epoch(cfg, model, opt, 1) == {0.3}  # search phase
    assert torch.equal(model.conv1.weight, w1) and not torch.equal(model.conv1.scores, s0)


def test_lottery_end_to_end_keeps_the_dense_phase_weights(tmp_path):
    argv = E2E + ["--trainer", "lottery", "--lottery_epochs", "1", "--epochs", "2", "--log-dir", str(tmp_path)]
    out = main_entry.main(argv)
    assert out["epochs_done"] == 2
    cfg = parse_config(argv)
    _, _, initial = prepare(cfg, DistContext())  # the same seeded random network
    folder = os.path.join(run_dir_for(cfg), "checkpoints")
    latest = load_checkpoint(os.path.join(folder, "model_latest.pth"))["state_dict"]
    best = load_checkpoint(os.path.join(folder, "model_best.pth"))["state_dict"]
    init = initial.state_dict()
    assert not torch.equal(latest["conv1.weight"], init["conv1.weight"]), "weights trained in the dense phase"
    assert not torch.equal(latest["conv1.scores"], init["conv1.scores"]), "scores trained in the search"
    assert torch.equal(latest["conv1.weight"], best["conv1.weight"]), "weights frozen after the dense phase"


def test_ss_adds_the_score_penalty_and_keeps_the_task_loss():
    cfg, model, _ = searching("--trainer", "ss", "--conv_type", "SampleSubnetConv")
    manual = sum(torch.sigmoid(m.scores).sum() for m in masked_layers(model))
    assert torch.allclose(ss.score_l1(model), manual)

    def run(trainer, coef):
        c, m, o = searching("--trainer", trainer, "--conv_type", "SampleSubnetConv", "--ss_l1", coef)
        torch.manual_seed(1)  # the same Bernoulli masks in every run
        one_epoch(c, m, o, 0)
        return torch.cat([layer.scores.detach().flatten() for layer in masked_layers(m)])

    start = torch.cat([m.scores.detach().flatten() for m in masked_layers(model)])
    plain, zero, penalised = run("default", "0"), run("ss", "0"), run("ss", "0.5")
    assert torch.equal(plain, zero), "coefficient 0: exactly the default trainer"
    assert not torch.equal(zero, start), "the task loss reaches the scores"
    assert torch.sigmoid(penalised).mean() < torch.sigmoid(zero).mean() - 1e-3


def test_ss_end_to_end(tmp_path):
    out = main_entry.main(E2E + ["--trainer", "ss", "--conv_type", "SampleSubnetConv", "--epochs", "1",
                                 "--log-dir", str(tmp_path)])
    assert out["epochs_done"] == 1 and 0 <= out["natural_acc1"] <= 100


@pytest.mark.parametrize("entry, extra, message", [
    (main_entry, ["--trainer", "lottery", "--epochs", "3"], "must exceed --lottery_epochs"),
    (main_entry, ["--trainer", "lottery", "--epochs", "9", "--task", "ft_inherit"], "needs main.py --task search"),
    (main_entry, ["--trainer", "lottery", "--epochs", "9", "--conv_type", "SampleSubnetConv"], "top-k --conv_type"),
    (full_entry, ["--trainer", "lottery", "--epochs", "9"], "needs main.py --task search"),
    (main_entry, ["--trainer", "ss", "--conv_type", "FixedSubnetConv"], "whose scores train"),
    (full_entry, ["--trainer", "ss"], "needs main.py --task search"),
    (main_entry, ["--trainer", "ss", "--ss_l1=-1"], "--ss_l1 must be >= 0"),
])
def test_refused_before_the_run_directory_exists(tmp_path, entry, extra, message):
    with pytest.raises(UserError, match=message):
        entry.main(E2E + ["--log-dir", str(tmp_path / "runs")] + extra)
    assert not (tmp_path / "runs").exists()


def test_trainer_registry_lists_the_variants():
    assert {"default", "lottery", "ss"} <= set(TRAINERS.names())
    assert TRAINERS.get("lottery") is lottery.train_lottery and TRAINERS.get("ss") is ss.train_ss
    assert TRAINERS.get("default") is train_epoch
