"""Optimiser with two parameter groups: BatchNorm parameters and the rest."""
import torch

from utils.errors import UserError

OPTIMIZERS = ("adam", "sgd")


def _groups(cfg, model):
    bn, hooked, rest = [], [], []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad:
                continue
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                bn.append(p)
            elif getattr(p, "decay_in_hook", False):
                hooked.append(p)
            else:
                rest.append(p)
    groups = [{"params": rest, "weight_decay": cfg.weight_decay},
              {"params": bn, "weight_decay": 0.0 if cfg.no_bn_decay else cfg.weight_decay}]
    if hooked:
        groups.append({"params": hooked, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(cfg, model):
    groups = _groups(cfg, model)
    if not groups:
        raise UserError("nothing to train: every parameter is frozen (check --task and --conv_type)")
    check_optimizer(cfg.optimizer)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.Adam(groups, lr=cfg.lr)


def check_optimizer(name):
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer '{name}'; valid: {', '.join(OPTIMIZERS)}")


def build_criterion(cfg):
    return torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing or 0.0)
