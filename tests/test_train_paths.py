"""Training paths as the original computes them: free training's perturbation and
metrics, which loss each training attack ascends, validation epochs and discard state
through a real run."""
import os

import pytest
import torch

import main as main_entry
import train_full as train_full_entry
from attacks.pgd import project
from trainers import pruning
from trainers.optim import build_criterion, build_optimizer
from trainers.tasks import setup_task
from trainers.train import _backward_step, train_epoch
from tests.helpers import tiny_cfg, tiny_model

Y = torch.arange(8) % 10


def edge_batch():
    """Half the pixels at 1.0, half at 0.0: a perturbation clipped to [0, 1] could not move them outwards."""
    torch.manual_seed(3)
    return (torch.rand(8, 3, 32, 32) > 0.5).float()


def run_epoch_counting(cfg, model, x, state=None):
    opt, criterion, calls, inputs = build_optimizer(cfg, model), build_criterion(cfg), [], []

    def counted(logits, y):
        calls.append(1)
        return criterion(logits, y)

    handle = model.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().clone()))
    out = train_epoch(model, [(x, Y)], opt, counted, cfg, torch.device("cpu"), 0, state=state, progress=False)
    handle.remove()
    return out, len(calls), inputs


def test_free_perturbation_is_kept_in_the_eps_ball_only_and_carried_on():
    cfg = tiny_cfg("--attack_type", "free", "--n_repeats", "3", "--epsilon", "8")
    model = tiny_model()
    setup_task(model, cfg, "unused")
    x, eps, state = edge_batch(), 8 / 255, {}
    out, calls, _ = run_epoch_counting(cfg, model, x, state)
    assert calls == 3 and out["n"] == 3 * 8  # train metrics average every replay
    delta = state["free_delta"].clone()
    assert float(delta.abs().max()) <= eps + 1e-7
    assert ((x + delta) > 1).any() and ((x + delta) < 0).any()  # carried unclipped to the image box
    out, _, inputs = run_epoch_counting(cfg, model, x, state)  # the next batch / epoch starts from it
    assert torch.equal(inputs[0], x + project(x, delta, eps))  # clipped to [0, 1] only where used


@pytest.mark.parametrize("attack, calls", [("pgd", 3), ("fgsm", 1), ("fgsm-rs", 1)])
def test_training_attack_losses(attack, calls):
    """PGD ascends the training criterion (label smoothing included), FGSM plain cross-entropy."""
    cfg = tiny_cfg("--attack_type", attack, "--attack_iters", "2", "--label-smoothing", "0.1")
    model = tiny_model()
    setup_task(model, cfg, "unused")
    _, n, _ = run_epoch_counting(cfg, model, edge_batch())
    assert n == calls


def common(tmp, *extra):
    return ["--set", "Digits", "--arch", "cResNet18", "--width-mult", "0.125", "-b", "64", "--low-data", "0.1",
            "--n_eval", "16", "--one-batch", "--seed", "0", "--log-dir", str(tmp), "--name", "t",
            "--workers", "0", *extra]


def latest(tmp, k, task):
    path = os.path.join(str(tmp), "no_config", "t", f"prune_rate={k}", task, "width_mult=0.125", "checkpoints",
                        "model_latest.pth")
    return torch.load(path, weights_only=True)


def test_run_validates_on_the_original_epochs_and_keeps_discard_sets(tmp_path):
    main_entry.main(common(tmp_path, "--epochs", "2", "--prune-rate", "0.3", "--val_every", "2", "--attack_type", "fgsm",
                           "--discard_mode", "--discard_epoch", "1", "--discard_rate", "0.3",
                           "--progressive_prune"))
    ckpt = latest(tmp_path, "0.3", "search")
    assert [h["epoch"] for h in ckpt["history"]] == [0, 1]  # e % val_every == 0, and the last
    scores = ckpt["state_dict"]["conv1.scores"]
    dropped = ckpt[pruning.KEY]["conv1"]
    assert (scores != 0).all()  # discarding never zeroes scores
    # after epoch 1 the lowest min(0.3 * 2, 1) of the current |scores| are discarded
    assert int(dropped.sum()) == int((1 - (1 - min(0.3 * 2, 1))) * scores.numel())
    assert scores.abs()[dropped].max() <= scores.abs()[~dropped].min()


def test_train_full_validates_every_10_epochs_early_on(tmp_path):
    train_full_entry.main(common(tmp_path, "--epochs", "3", "--val_every", "1", "--attack_type", "None"))
    history = latest(tmp_path, "1.0", "search")["history"]  # train_full runs in its --task folder
    assert [h["epoch"] for h in history] == [0, 2]


def test_gradient_edits_see_unscaled_gradients_under_a_grad_scaler():
    """fp16 training: --ft_full_mode/--discard_mode edits run after unscaling, so the step
    equals the unscaled one (a CPU GradScaler stands in for the CUDA one)."""
    p = torch.nn.Parameter(torch.ones(4))
    seen, after = [], []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=1024.0)):
        with torch.no_grad():
            p.fill_(1.0)
        opt = torch.optim.SGD([p], lr=0.1)

        def edit():
            seen.append(p.grad.clone())
            p.grad.add_(1.0)
        _backward_step((p * torch.arange(4.0)).sum(), opt, scaler, edit)
        after.append(p.detach().clone())
    assert torch.equal(seen[0], seen[1]) and torch.equal(after[0], after[1])
    assert torch.equal(after[0], 1 - 0.1 * (torch.arange(4.0) + 1))
