"""Optimiser and criterion, as the original builds them.

SGD has two parameter groups, in the original's order: the trainable parameters
whose *name* contains "bn" (so BatchNorms named ``bn1``/``bn2``; a shortcut's
``shortcut.1`` or VGG's ``features.N`` BatchNorm falls in the other group, as in
the original), then the rest. The "bn" group is kept even when empty (a search
with NonAffineBatchNorm), so the group layout, and with it the optimiser state
of a checkpoint, is the original's. Adam takes every trainable parameter in one
group, without weight decay (the original gives Adam none).
"""
import torch

from utils.errors import UserError

OPTIMIZERS = ("adam", "sgd")


def is_bn_name(name):
    """The original's rule for the BatchNorm group: "bn" anywhere in the parameter name."""
    return "bn" in name


def decay_on_zero(cfg):
    """ft_full --ft_full_mode decay_on_zero: the original turns SGD decay off for the
    non-"bn" group and adds its own norm penalty's gradient (``tasks.edit_ft_full_grads``)."""
    return cfg.task == "ft_full" and cfg.ft_full_mode == "decay_on_zero"


def _groups(cfg, model):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    bn = [p for n, p in named if is_bn_name(n)]
    rest = [p for n, p in named if not is_bn_name(n)]
    return [{"params": bn, "weight_decay": 0.0 if cfg.no_bn_decay else cfg.weight_decay},
            {"params": rest, "weight_decay": 0.0 if decay_on_zero(cfg) else cfg.weight_decay}]


def build_optimizer(cfg, model):
    check_optimizer(cfg.optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("nothing to train: every parameter is frozen (check --task and --conv_type)")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(_groups(cfg, model), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    return torch.optim.Adam(params, lr=cfg.lr)


def check_optimizer(name):
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer '{name}'; valid: {', '.join(OPTIMIZERS)}")


def build_criterion(cfg):
    """Cross-entropy, with --label-smoothing if given (the original's LabelSmoothing
    computes (1-s)*nll + s*mean(-log p), which is torch's label_smoothing)."""
    return torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing or 0.0)
