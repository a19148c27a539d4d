"""One training epoch: natural, attack-augmented (pgd / fgsm / fgsm-rs) or free.

Training attacks run with the model in train mode (BatchNorm batch statistics)
and move every example at every step; they receive the bare module (not the
DDP wrapper) since each rank attacks its own examples.
"""
import functools
import math

import torch
from tqdm import tqdm

from trainers.evaluate import autocast, to_input
from trainers.metrics import Meter
from attacks.pgd import fgsm, fgsm_rs, free_update, pgd, project
from utils.distributed import DistContext, all_reduce_sum
from utils.errors import UserError
from utils.registry import Registry

TRAINERS = Registry("trainer")
PGD_TRAIN_STEP = 2 / 255  # the original ignores --alpha for pgd


class NonFiniteLoss(UserError):
    pass


def make_train_attack(cfg):
    """Callable ``(model, x, y) -> x_adv`` for --attack_type (None for natural or free)."""
    eps = cfg.epsilon / 255
    if cfg.attack_type == "pgd":
        return functools.partial(pgd, epsilon=eps, step=PGD_TRAIN_STEP, iters=cfg.attack_iters)
    if cfg.attack_type == "fgsm":
        return functools.partial(fgsm, epsilon=eps, alpha=cfg.alpha / 255)
    if cfg.attack_type == "fgsm-rs":
        return functools.partial(fgsm_rs, epsilon=eps)
    return None


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def _backward_step(loss, optimizer, scaler):
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


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
    attack = make_train_attack(cfg)
    done = int(resume_from["batches"]) if resume_from else 0
    meter = Meter.from_totals(resume_from["totals"]) if resume_from and ctx.is_main else Meter()
    stopped = False
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not (progress and ctx.is_main),
               initial=done, total=done + len(loader))
    for i, (x, y) in enumerate(bar, start=done):
        x, y = to_input(x, device, getattr(cfg, "channels_last", False)), y.to(device, non_blocking=True)
        if cfg.attack_type == "free":
            logits, loss = _free_batch(model, x, y, optimizer, criterion, cfg, device, scaler, state)
            _check_finite(loss, epoch, i)
        else:
            with autocast(cfg.amp, device):
                if attack is not None:
                    x = attack(unwrap(model), x, y)
                logits = model(x)
                loss = criterion(logits.float(), y)
            _check_finite(loss, epoch, i)
            _backward_step(loss, optimizer, scaler)
        meter.update(logits.detach(), y, loss.detach())
        done = i + 1
        if should_stop is not None and should_stop():
            stopped = True
            break
    totals = all_reduce_sum(ctx, meter.totals(), device)
    summary = Meter.from_totals(totals).summary()
    summary.update(interrupted=stopped, batches_done=done, totals=totals)
    return summary


def _free_batch(model, x, y, optimizer, criterion, cfg, device, scaler, state):
    """Free adversarial training: replay the batch n_repeats times, carrying delta."""
    eps = cfg.epsilon / 255
    delta = state.get("free_delta")
    if delta is None or delta.shape[1:] != x.shape[1:] or delta.size(0) < x.size(0):
        delta = torch.zeros_like(x)
    delta = project(x, delta[: x.size(0)].to(device), eps)  # carried delta may leave [0, 1] on new x
    for _ in range(max(1, cfg.n_repeats)):
        d = delta.detach().requires_grad_(True)
        with autocast(cfg.amp, device):
            logits = model(x + d)
            loss = criterion(logits.float(), y)
        _backward_step(loss, optimizer, scaler)
        delta = free_update(x, delta, d.grad, eps)
    state["free_delta"] = delta
    return logits, loss
