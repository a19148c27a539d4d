"""What each task trains and freezes; ft_full modes act as documented; discard/progressive."""
import os

import pytest
import torch
import torch.nn.functional as F

from models import masked_layers
from trainers import pruning
from trainers.optim import build_optimizer
from trainers.tasks import find_search_checkpoint, setup_task
from utils.checkpoint import atomic_save
from utils.errors import UserError
from utils.run_dir import run_dir_for
from tests.helpers import tiny_cfg, tiny_model

X = torch.rand(8, 3, 32, 32)
Y = torch.arange(8) % 10


@pytest.fixture()
def ticket(tmp_path):
    """A 'searched' ticket checkpoint with non-trivial scores."""
    model = tiny_model(seed=5)
    path = str(tmp_path / "ticket.pth")
    atomic_save({"state_dict": model.state_dict(), "arch": "cResNet18", "prune_rate": 0.3}, path)
    return path, model


def prepared(task, path, *extra):
    cfg = tiny_cfg("--task", task, "--pretrained", path, *extra)
    model = tiny_model(seed=9)
    setup_task(model, cfg, "unused")
    return cfg, model


def step(cfg, model, zero_loss=False):
    opt = build_optimizer(cfg, model)
    model.train()
    loss = F.cross_entropy(model(X), Y)
    (loss * 0 if zero_loss else loss).backward()
    opt.step()


def test_search_trains_scores_only():
    cfg = tiny_cfg()
    model = tiny_model()
    setup_task(model, cfg, "unused")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step(cfg, model)
    for layer in masked_layers(model):
        assert not layer.weight.requires_grad and layer.scores.requires_grad
    assert torch.equal(model.conv1.weight, before["conv1.weight"])
    assert not torch.equal(model.conv1.scores, before["conv1.scores"])


def test_ft_inherit_keeps_mask_trains_weights(ticket):
    path, source = ticket
    cfg, model = prepared("ft_inherit", path)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    mask = model.conv1.mask().clone()
    step(cfg, model)
    assert torch.equal(model.conv1.scores, source.conv1.scores)
    assert torch.equal(model.conv1.mask(), mask)
    assert not torch.equal(model.conv1.weight, source.conv1.weight)


def test_ft_reinit_changes_weights_not_mask(ticket):
    path, source = ticket
    _, model = prepared("ft_reinit", path, "--ft_init", "kaiming_uniform")
    assert torch.equal(model.conv1.mask(), source.conv1.mask())
    assert not torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.conv1.weight.requires_grad and not model.conv1.scores.requires_grad


def test_ft_needs_a_search_checkpoint(tmp_path):
    cfg = tiny_cfg("--task", "ft_inherit", "--log-dir", str(tmp_path), "--name", "n")
    run = run_dir_for(cfg)
    with pytest.raises(UserError) as exc:
        find_search_checkpoint(cfg, run)
    assert os.path.join("search", "width_mult=0.125", "checkpoints", "model_best.pth") in str(exc.value)
    best = tmp_path / "no_config" / "n" / "prune_rate=0.3" / "search" / "width_mult=0.125" / "checkpoints" / \
        "model_best.pth"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"x")
    assert os.path.samefile(find_search_checkpoint(cfg, run), best)


def _ft_full(path, mode, *extra):
    cfg, model = prepared("ft_full", path, "--ft_full_mode", mode, "--momentum", "0", *extra)
    pruned = model.conv1.pruned.bool()
    return cfg, model, pruned


def test_ft_full_zeroes_pruned_weights_and_trains_all(ticket):
    path, source = ticket
    cfg, model, pruned = _ft_full(path, "all")
    w0 = model.conv1.weight.detach().clone()
    assert (w0[pruned] == 0).all() and torch.equal(w0[~pruned], source.conv1.weight[~pruned])
    step(cfg, model)
    changed = model.conv1.weight.detach() != w0
    assert changed[pruned].any() and changed[~pruned].any()


def test_only_zero_moves_only_pruned(ticket):
    cfg, model, pruned = _ft_full(ticket[0], "only_zero", "--wd", "0.1", "--momentum", "0.9")
    w0 = model.conv1.weight.detach().clone()
    for _ in range(2):
        step(cfg, model)
    w = model.conv1.weight.detach()
    assert torch.equal(w[~pruned], w0[~pruned])
    assert (w[pruned] != 0).any()


def test_decay_on_zero_uses_its_own_decay(ticket):
    cfg, model, pruned = _ft_full(ticket[0], "decay_on_zero", "--wd", "0.01", "--weight_decay_on_zero", "0.5",
                                  "--lr", "0.1")
    with torch.no_grad():
        model.conv1.weight.fill_(1.0)
    step(cfg, model, zero_loss=True)
    w = model.conv1.weight.detach()
    assert torch.allclose(w[pruned], torch.full_like(w[pruned], 1 - 0.1 * 0.5))
    assert torch.allclose(w[~pruned], torch.full_like(w[~pruned], 1 - 0.1 * 0.01))


def test_low_lr_zero_scales_pruned_updates(ticket):
    deltas = {}
    for mode in ("all", "low_lr_zero"):
        torch.manual_seed(0)
        cfg, model, pruned = _ft_full(ticket[0], mode, "--wd", "0", "--lr_scale_zero", "0.25")
        w0 = model.conv1.weight.detach().clone()
        step(cfg, model)
        deltas[mode] = model.conv1.weight.detach() - w0
    assert pruned.any()
    assert torch.allclose(deltas["low_lr_zero"][pruned], 0.25 * deltas["all"][pruned], atol=1e-7)
    assert torch.allclose(deltas["low_lr_zero"][~pruned], deltas["all"][~pruned], atol=1e-7)


def test_discard_zeroes_lowest_scores_and_freezes_them():
    cfg = tiny_cfg("--discard_mode", "--discard_epoch", "2", "--discard_rate", "0.2")
    model = tiny_model()
    setup_task(model, cfg, "unused")
    pruning.install_discard_hooks(model)
    opt = build_optimizer(cfg, model)
    assert pruning.discard_fraction(cfg, 0) == 0 and pruning.discard_fraction(cfg, 1) == pytest.approx(0.2)
    step(cfg, model)
    pruning.discard_scores(model, opt, pruning.discard_fraction(cfg, 3))
    s = model.conv1.scores.detach()
    dropped = s == 0
    assert dropped.float().mean().item() == pytest.approx(0.4, abs=0.01)
    for _ in range(2):
        F.cross_entropy(model(X), Y).backward()
        opt.step()
        opt.zero_grad()
    assert (model.conv1.scores.detach()[dropped] == 0).all()


def test_progressive_k_schedule():
    cfg = tiny_cfg("--prune-rate", "0.5", "--discard_epoch", "10", "--discard_rate", "0.1")
    assert [pruning.progressive_k(cfg, e) for e in (0, 9, 10, 25, 100)] == pytest.approx([0.9, 0.9, 0.8, 0.7, 0.5])
