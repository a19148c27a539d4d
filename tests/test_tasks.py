"""What each task trains and freezes; ft_full modes act as documented; discard/progressive."""
import os

import pytest
import torch
import torch.nn.functional as F

from models import masked_layers
from trainers import pruning
from trainers.optim import build_criterion, build_optimizer
from trainers.tasks import find_search_checkpoint, setup_task
from trainers.train import grad_editor, train_epoch
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
    """Every weight and bias is frozen, BatchNorm affine included (the original's freeze_model_weights)."""
    cfg = tiny_cfg("--bn-type", "LearnedBatchNorm")
    model = tiny_model("--bn-type", "LearnedBatchNorm")
    setup_task(model, cfg, "unused")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == \
        [n for n, _ in model.named_parameters() if n.endswith("scores")]
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
    pruned = ~model.conv1.ft_kept
    return cfg, model, pruned


def adv_step(cfg, model, opt=None):
    """One step of our trainer (FGSM, deterministic): the ft_full/discard edits act here."""
    opt = opt or build_optimizer(cfg, model)
    train_epoch(model, [(X, Y)], opt, build_criterion(cfg), cfg, torch.device("cpu"), 0, progress=False)
    return opt


def test_ft_full_zeroes_pruned_weights_and_trains_all(ticket):
    path, source = ticket
    cfg, model, pruned = _ft_full(path, "all")
    w0 = model.conv1.weight.detach().clone()
    assert (w0[pruned] == 0).all() and torch.equal(w0[~pruned], source.conv1.weight[~pruned])
    step(cfg, model)
    changed = model.conv1.weight.detach() != w0
    assert changed[pruned].any() and changed[~pruned].any()


def test_only_zero_kept_weights_move_by_decay_and_momentum_only(ticket):
    """The original zeroes the kept weights' gradients; SGD's decay and momentum still act."""
    wd, lr, mom = 0.1, 0.1, 0.9
    cfg, model, pruned = _ft_full(ticket[0], "only_zero", "--wd", str(wd), "--lr", str(lr),
                                  "--momentum", str(mom), "--attack_type", "fgsm")
    w = model.conv1.weight.detach().clone()
    expected, buf, opt = w.clone(), None, None
    for _ in range(2):
        opt = adv_step(cfg, model, opt)
        g = wd * expected  # a zero gradient plus decay
        buf = g if buf is None else mom * buf + g
        expected = expected - lr * buf
    now = model.conv1.weight.detach()
    torch.testing.assert_close(now[~pruned], expected[~pruned], rtol=1e-6, atol=1e-8)
    assert (now[pruned] != 0).any()


def test_decay_on_zero_adds_the_gradient_of_two_l2_norms(ticket):
    """wd * ||w_kept||_2 + wd0 * ||w_pruned||_2 (non-squared), SGD decay off for non-bn params."""
    cfg, model, pruned = _ft_full(ticket[0], "decay_on_zero", "--wd", "0.01", "--weight_decay_on_zero", "0.5",
                                  "--lr", "0.1", "--attack_type", "fgsm")
    opt = build_optimizer(cfg, model)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    with torch.no_grad():
        model.conv1.weight.fill_(1.0)
    opt.zero_grad()
    (model(X).sum() * 0).backward()
    grad_editor(model, cfg)()
    opt.step()
    w = model.conv1.weight.detach()
    n_pruned, n_kept = int(pruned.sum()), int((~pruned).sum())
    torch.testing.assert_close(w[pruned], torch.full_like(w[pruned], 1 - 0.1 * 0.5 / n_pruned ** 0.5))
    torch.testing.assert_close(w[~pruned], torch.full_like(w[~pruned], 1 - 0.1 * 0.01 / n_kept ** 0.5))


def test_low_lr_zero_scales_pruned_updates(ticket):
    deltas = {}
    for mode in ("all", "low_lr_zero"):
        cfg, model, pruned = _ft_full(ticket[0], mode, "--wd", "0", "--lr_scale_zero", "0.25",
                                      "--attack_type", "fgsm")
        w0 = model.conv1.weight.detach().clone()
        adv_step(cfg, model)
        deltas[mode] = model.conv1.weight.detach() - w0
    assert pruned.any()
    torch.testing.assert_close(deltas["low_lr_zero"][pruned], 0.25 * deltas["all"][pruned], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(deltas["low_lr_zero"][~pruned], deltas["all"][~pruned], rtol=1e-5, atol=1e-7)


def test_ft_full_modes_act_only_in_adversarial_training(ticket):
    """As in the original, natural training ignores --ft_full_mode."""
    deltas = []
    for mode in ("all", "only_zero"):
        cfg, model, _ = _ft_full(ticket[0], mode)
        w0 = model.conv1.weight.detach().clone()
        step(cfg, model)
        deltas.append(model.conv1.weight.detach() - w0)
    assert grad_editor(model, cfg) is not None and torch.equal(deltas[0], deltas[1])


def test_discard_masks_gradients_but_never_zeroes_scores():
    cfg = tiny_cfg("--discard_mode", "--discard_epoch", "2", "--discard_rate", "0.2", "--attack_type", "fgsm",
                   "--wd", "0", "--momentum", "0")
    model = tiny_model()
    setup_task(model, cfg, "unused")
    assert [pruning.discard_fraction(cfg, e) for e in range(4)] == [0, 0.2, 0, 0.4]
    extra = {}
    pruning.discard_low_scores(model, pruning.discard_fraction(cfg, 3), extra)
    s0 = model.conv1.scores.detach().clone()
    dropped = model.conv1.discard_mask
    n = s0.numel()
    assert int(dropped.sum()) == int((1 - (1 - 0.4)) * n)
    assert s0.abs()[dropped].max() <= s0.abs()[~dropped].min() and (s0 != 0).all()
    assert extra[pruning.KEY]["conv1"] is dropped
    adv_step(cfg, model)
    s1 = model.conv1.scores.detach()
    assert torch.equal(s1[dropped], s0[dropped]) and not torch.equal(s1[~dropped], s0[~dropped])
    # the next discard set comes from the current |scores|, not from earlier sets
    pruning.discard_low_scores(model, 0.5, extra)
    expected = s1.abs().flatten().argsort()[: int(0.5 * n)]
    assert torch.equal(model.conv1.discard_mask.flatten().nonzero().flatten().sort().values, expected.sort().values)
    # a resumed run gets its sets back from the checkpoint's loop state
    fresh = tiny_model()
    pruning.restore(fresh, extra)
    assert torch.equal(fresh.conv1.discard_mask, model.conv1.discard_mask)


def test_discard_masks_nothing_in_natural_training_and_decay_still_acts():
    """The original masks gradients only in train_adv/free; decay moves discarded scores."""
    cfg = tiny_cfg("--discard_mode", "--wd", "0", "--momentum", "0")
    model = tiny_model()
    setup_task(model, cfg, "unused")
    pruning.discard_low_scores(model, 0.5, {})
    dropped, s0 = model.conv1.discard_mask, model.conv1.scores.detach().clone()
    step(cfg, model)  # natural: the gradient reaches the discarded scores
    assert (model.conv1.scores.detach()[dropped] != s0[dropped]).all()
    cfg = tiny_cfg("--discard_mode", "--wd", "0.1", "--momentum", "0", "--attack_type", "fgsm")
    s0 = model.conv1.scores.detach().clone()
    adv_step(cfg, model)  # adversarial: gradient masked, decay only
    torch.testing.assert_close(model.conv1.scores.detach()[dropped], s0[dropped] * (1 - 0.1 * 0.1))


def test_progressive_k_schedule_has_no_floor():
    cfg = tiny_cfg("--prune-rate", "0.5", "--discard_epoch", "10", "--discard_rate", "0.1")
    assert [pruning.progressive_k(cfg, e) for e in (0, 9, 10, 25, 89, 90, 100)] == pytest.approx(
        [0.9, 0.9, 0.8, 0.7, 0.1, 0.0, -0.1])
    model = tiny_model()
    pruning.set_progressive_k(model, cfg, 100)
    assert model.conv1.mask().sum() == 0
