"""One training epoch: natural, attack-augmented (pgd / fgsm / fgsm-rs) or free.

Training attacks run with the model in train mode (BatchNorm batch statistics)
and move every example at every step; they receive the bare module (not the
DDP wrapper) since each rank attacks its own examples. As in the original, PGD
ascends the training criterion (label smoothing included) while FGSM and FGSM-RS
ascend plain cross-entropy, and the gradient edits of --ft_full_mode and
--discard_mode act only in adversarial training (attacks and free).
"""
import functools
import math

import torch
from tqdm import tqdm

from trainers import pruning
from evaluation.evaluate import autocast, to_input
from evaluation.metrics import Meter
from trainers.tasks import edit_ft_full_grads
from attacks.pgd import fgsm, fgsm_rs, pgd, project
from utils.distributed import DistContext, all_reduce_sum, unwrap
from utils.errors import UserError
from utils.registry import Registry

TRAINERS = Registry("trainer")
PGD_TRAIN_STEP = 2 / 255  # --train_step's default: the original's (it ignores --alpha for pgd)


class NonFiniteLoss(UserError):
    pass


def make_train_attack(cfg, criterion=None):
    """Callable ``(model, x, y) -> x_adv`` for --attack_type (None for natural or free).

    ``criterion`` is the loss PGD ascends (the training criterion in the original;
    cross-entropy if None); FGSM and FGSM-RS always ascend plain cross-entropy.
    """
    eps = cfg.epsilon / 255
    if cfg.attack_type == "pgd":
        return functools.partial(pgd, epsilon=eps, step=getattr(cfg, "train_step", 2) / 255, iters=cfg.attack_iters,
                                 loss_fn=criterion)
    if cfg.attack_type == "fgsm":
        return functools.partial(fgsm, epsilon=eps, alpha=cfg.alpha / 255)
    if cfg.attack_type == "fgsm-rs":
        return functools.partial(fgsm_rs, epsilon=eps)
    return None


def _backward_step(loss, optimizer, scaler, edit_grads=None):
    """Backward and step; ``edit_grads()`` runs between them on unscaled gradients."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if edit_grads is not None:
            scaler.unscale_(optimizer)
            edit_grads()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if edit_grads is not None:
            edit_grads()
        optimizer.step()


def grad_editor(model, cfg):
    """The original's edits before each adversarial-training step: --ft_full_mode's,
    then --discard_mode's (None when neither applies)."""
    if not ((cfg.task == "ft_full" and cfg.ft_full_mode != "all") or cfg.discard_mode):
        return None
    bare = unwrap(model)

    def edit():
        edit_ft_full_grads(bare, cfg)
        if cfg.discard_mode:
            pruning.mask_discarded_grads(bare)
    return edit


def _check_finite(loss, epoch, batch):
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLoss(f"non-finite loss ({value}) at epoch {epoch} batch {batch}; "
                            "stopped, last good checkpoint kept (lower --lr or check the data)")


@TRAINERS.register("default")
def train_epoch(model, loader, optimizer, criterion, cfg, device, epoch, ctx=DistContext(),
                scaler=None, state=None, progress=True, should_stop=None, resume_from=None):
    """Train one epoch; returns the epoch's mean loss and accuracies (percent).

    ``state`` is a dict carried across epochs (the free attack's perturbation).
    ``should_stop()`` is polled after every batch (SIGTERM); the epoch ends early
    and ``interrupted`` is set in the result. ``batches_done`` (batches of this
    epoch trained so far) and ``totals`` (summed loss/correct counts over all
    ranks) let a checkpoint continue the epoch: ``resume_from`` takes them back
    when the loader already skips those batches, so batch numbers and metrics
    carry on (on one process the sums are bit-exact; on several, rank 0 carries them).
    """
    model.train()
    state = {} if state is None else state
    attack = make_train_attack(cfg, criterion)
    edit = grad_editor(model, cfg) if cfg.attack_type else None
    done = int(resume_from["batches"]) if resume_from else 0
    meter = Meter.from_totals(resume_from["totals"]) if resume_from and ctx.is_main else Meter()
    stopped = False
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not (progress and ctx.is_main),
               initial=done, total=done + len(loader))
    for i, (x, y) in enumerate(bar, start=done):
        x, y = to_input(x, device, getattr(cfg, "channels_last", False)), y.to(device, non_blocking=True)
        if cfg.attack_type == "free":
            _free_batch(model, x, y, optimizer, criterion, cfg, scaler, state, meter, edit, (epoch, i))
        else:
            with autocast(cfg.amp, device):
                if attack is not None:
                    x = attack(unwrap(model), x, y)
                logits = model(x)
                loss = criterion(logits.float(), y)
            _check_finite(loss, epoch, i)
            _backward_step(loss, optimizer, scaler, edit)
            meter.update(logits.detach(), y, loss.detach())
        done = i + 1
        if should_stop is not None and should_stop():
            stopped = True
            break
    totals = all_reduce_sum(ctx, meter.totals(), device)
    summary = Meter.from_totals(totals).summary()
    summary.update(interrupted=stopped, batches_done=done, totals=totals)
    return summary


def _free_batch(model, x, y, optimizer, criterion, cfg, scaler, state, meter, edit, where):
    """Free adversarial training (Shafahi et al.), as the original does it.

    The batch is replayed n_repeats times; each replay is one optimiser step and
    one metrics update (train accuracy averages all replays). The perturbation
    ``state['free_delta']`` persists across replays, batches and epochs (and in
    checkpoints); it is kept in the eps-ball only and clipped to the image box
    [0, 1] only where it is used: x + clip(delta) is the input, and
    delta += eps * sign(gradient there), then clamped to [-eps, eps].
    """
    eps = cfg.epsilon / 255
    noise = state.get("free_delta")
    if noise is None or noise.shape[1:] != x.shape[1:] or noise.size(0) < x.size(0):
        noise = torch.zeros_like(x)  # sized by the first batch, like the original's
    noise = noise.to(x.device)
    n = x.size(0)
    for _ in range(max(1, cfg.n_repeats)):
        d = project(x, noise[:n], eps).requires_grad_(True)
        with autocast(cfg.amp, x.device):
            logits = model(x + d)
            loss = criterion(logits.float(), y)
        _check_finite(loss, *where)
        _backward_step(loss, optimizer, scaler, edit)
        meter.update(logits.detach(), y, loss.detach())
        with torch.no_grad():
            noise[:n] += eps * torch.nan_to_num(d.grad.sign(), nan=0.0)
            noise.clamp_(-eps, eps)
    state["free_delta"] = noise
