"""Learning-rate policies (``--lr_policy``). Each returns ``set_lr(epoch, iteration=None) -> lr``,
which writes the lr into every optimiser parameter group (scaled by the group's
``lr_scale``, 1 unless a task set it). Epochs count from 0. Every rate is the
original's float expression, so the schedules equal its own bit for bit (cosine
uses numpy's cos, as the original does).
"""
import logging
import math

import numpy as np

from utils.errors import UserError
from utils.registry import Registry

log = logging.getLogger("rst")
LR_POLICIES = Registry("lr policy")
SSFD_TAIL = (2.5, 1.25, 0.625, 0.3125, 0.15625)


def _assigner(optimizer, rule):
    def set_lr(epoch, iteration=None):
        lr = rule(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr
    return set_lr


def _warmup_lr(cfg, epoch):
    """Linear warm-up over --warmup_length epochs: lr * (e + 1) / warmup (None once done)."""
    if epoch < cfg.warmup_length:
        return cfg.lr * (epoch + 1) / cfg.warmup_length
    return None


@LR_POLICIES.register()
def constant_lr(optimizer, cfg):
    return _assigner(optimizer, lambda e: _warmup_lr(cfg, e) or cfg.lr)


@LR_POLICIES.register()
def cosine_lr(optimizer, cfg):
    def rule(e):
        w = _warmup_lr(cfg, e)
        if w is not None:
            return w
        span = max(1, cfg.epochs - cfg.warmup_length)
        return float(0.5 * (1 + np.cos(np.pi * (e - cfg.warmup_length) / span)) * cfg.lr)
    return _assigner(optimizer, rule)


def _steps(milestones, factors):
    def rule_factor(e):
        f = 1.0
        for m, factor in zip(milestones, factors):
            if e >= m:
                f = factor
        return f
    return rule_factor


@LR_POLICIES.register()
def multistep_lr(optimizer, cfg):
    if not cfg.multistep:
        raise UserError("--lr_policy multistep_lr needs milestones: pass e.g. --multistep 80 120")
    factor = _steps(list(cfg.multistep)[:2], (0.1, 0.01))
    return _assigner(optimizer, lambda e: cfg.lr * factor(e))


@LR_POLICIES.register()
def cifar_piecewise(optimizer, cfg):
    factor = _steps((80, 120), (0.1, 0.01))
    return _assigner(optimizer, lambda e: cfg.lr * factor(e))


@LR_POLICIES.register()
def cifar_piecewise_adv(optimizer, cfg):
    factor = _steps((50, 150), (0.1, 0.01))
    return _assigner(optimizer, lambda e: cfg.lr * factor(e))


@LR_POLICIES.register()
def multistep_lr_imagenet(optimizer, cfg):
    step = max(1, cfg.multistep_lr_adjust)
    return _assigner(optimizer, lambda e: cfg.lr * cfg.multistep_lr_gamma ** (e // step))


@LR_POLICIES.register()
def multistep_lr_imagenet_free(optimizer, cfg):
    """Free training replays each batch n_repeats times, so epochs are n_repeats x shorter:
    x gamma every ceil(adjust / n_repeats) epochs."""
    step = max(1, int(math.ceil(cfg.multistep_lr_adjust / max(1, cfg.n_repeats))))
    return _assigner(optimizer, lambda e: cfg.lr * cfg.multistep_lr_gamma ** (e // step))


@LR_POLICIES.register()
def ssfd(optimizer, cfg):
    """10-epoch cycle: lr*(e+1) for e <= 4, then 2.5, 1.25, 0.625, 0.3125, 0.15625 x lr."""
    def rule(epoch):
        e = epoch % 10
        return cfg.lr * (e + 1) if e <= 4 else cfg.lr * SSFD_TAIL[e - 5]
    return _assigner(optimizer, rule)


def get_policy(optimizer, cfg):
    return LR_POLICIES.get(cfg.lr_policy)(optimizer, cfg)


def apply_free_imagenet(cfg):
    """main.py's rewrite for free training on ImageNet (done before anything is built):
    the multistep_lr_imagenet_free policy and ceil(epochs / n_repeats) epochs, since
    every batch is replayed n_repeats times. train_full.py does not apply it."""
    if cfg.attack_type != "free" or cfg.set != "ImageNet":
        return
    epochs = int(math.ceil(cfg.epochs / max(1, cfg.n_repeats)))
    log.info("free training on ImageNet: --lr_policy %s -> multistep_lr_imagenet_free, --epochs %d -> %d "
             "(each batch is replayed --n_repeats %d times)", cfg.lr_policy, cfg.epochs, epochs, cfg.n_repeats)
    cfg.lr_policy, cfg.epochs = "multistep_lr_imagenet_free", epochs
