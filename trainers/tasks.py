"""Tasks (``--task``): what is loaded, what trains and what stays frozen.

search      weights frozen, scores (and learnable BN) train; --pretrained loads
            weights first (an RTT is drawn from a trained network that way).
ft_inherit  load a searched ticket, freeze its mask, train the weights in it.
ft_reinit   the same after re-initialising every conv weight with --ft_init.
ft_full     multiply weights by the mask once, then train all weights densely,
            with --ft_full_mode deciding how the pruned weights train.
"""
import logging
import os

import torch

from models.conv_type import FixedSubnetConv, MaskedConv
from models.init import InitSpec, init_weight
from utils.checkpoint import check_arch, extract_state_dict, load_checkpoint, load_model_state
from utils.errors import UserError
from utils.registry import Registry
from utils.run_dir import prune_rate_dir, run_dir_for

TASKS = Registry("task")
log = logging.getLogger("rst")


def masked(model):
    return [m for m in model.modules() if isinstance(m, MaskedConv)]


def set_trainable(model, weights, scores):
    """Conv weights/biases train iff ``weights``; scores iff ``scores``; BN always."""
    for name, p in model.named_parameters():
        is_score = name.endswith("scores")
        p.requires_grad_(scores if is_score else True)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            for p in (m.weight, m.bias):
                if p is not None:
                    p.requires_grad_(weights)
    for m in model.modules():
        if isinstance(m, FixedSubnetConv):
            m.scores.requires_grad_(False)


def load_pretrained(model, path, cfg):
    """Load a checkpoint's state dict into ``model`` (strict unless --not_strict)."""
    ckpt = load_checkpoint(path)
    check_arch(ckpt, cfg.arch, path)
    load_model_state(model, extract_state_dict(ckpt, path), strict=not cfg.not_strict, path=path)
    for m in masked(model):
        m.clear_cache()
    log.info("loaded weights from %s", path)
    return ckpt


def find_search_checkpoint(cfg, run_dir):
    """--pretrained, else the sibling search run's best checkpoint.

    Looked for, as the original does, in ``<prune_rate=k>/search/`` and then in
    ``<prune_rate=k>/`` itself; both come from ``run_dir_for`` (not from
    ``run_dir``, the fine-tuning run's own folder), so with --width-mult the search
    run's ``width_mult=<w>`` level is followed (the original looked under the
    fine-tuning run's own folder there and stopped).
    """
    if cfg.pretrained:
        return cfg.pretrained
    search = run_dir_for(cfg, "search")
    candidates = [os.path.join(search, "checkpoints", "model_best.pth"),
                  os.path.join(prune_rate_dir(cfg), "checkpoints", "model_best.pth")]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise UserError(f"--task {cfg.task} needs a searched ticket: pass --pretrained, or run the search first "
                    f"(looked for {candidates[0]} and {candidates[1]})")


@TASKS.register("search")
def setup_search(model, cfg, run_dir):
    if cfg.pretrained:
        load_pretrained(model, cfg.pretrained, cfg)
    if not masked(model):
        raise UserError(f"--task search needs a masked --conv_type (got {cfg.conv_type}); "
                        "use train_full.py for dense training")
    set_trainable(model, weights=False, scores=True)


@TASKS.register("ft_inherit")
def setup_ft_inherit(model, cfg, run_dir):
    load_pretrained(model, find_search_checkpoint(cfg, run_dir), cfg)
    set_trainable(model, weights=True, scores=False)


@TASKS.register("ft_reinit")
def setup_ft_reinit(model, cfg, run_dir):
    load_pretrained(model, find_search_checkpoint(cfg, run_dir), cfg)
    spec = InitSpec(cfg.mode, cfg.nonlinearity, cfg.scale_fan, float(cfg.prune_rate))
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            dense_spec = InitSpec(cfg.mode, cfg.nonlinearity)
            init_weight(cfg.ft_init, m.weight, spec if isinstance(m, MaskedConv) else dense_spec)
    set_trainable(model, weights=True, scores=False)


@TASKS.register("ft_full")
def setup_ft_full(model, cfg, run_dir):
    load_pretrained(model, find_search_checkpoint(cfg, run_dir), cfg)
    with torch.no_grad():
        for m in masked(model):
            pruned = 1.0 - m.mask().expand_as(m.weight)
            m.weight.mul_(1.0 - pruned)
            m.set_prune_rate(1.0)
            m.pruned = pruned
    set_trainable(model, weights=True, scores=False)
    install_ft_full_hooks(model, cfg)


def install_ft_full_hooks(model, cfg):
    """Gradient hooks realising --ft_full_mode on each formerly masked weight.

    Weight decay for these weights is applied inside the hook (the optimiser
    gets weight_decay 0 for them, see ``trainers.optim``), so that pruned and
    kept entries can decay differently and frozen entries do not decay at all.
    """
    mode, wd = cfg.ft_full_mode, cfg.weight_decay
    for m in masked(model):
        pruned, w = m.pruned, m.weight
        if mode == "only_zero":
            w.register_hook(lambda g, w=w, p=pruned: (g + wd * w.detach()) * p)
        elif mode == "decay_on_zero":
            decay = cfg.weight_decay_on_zero * pruned + wd * (1.0 - pruned)
            w.register_hook(lambda g, w=w, d=decay: g + d * w.detach())
        elif mode == "low_lr_zero":
            scale = 1.0 + (cfg.lr_scale_zero - 1.0) * pruned
            w.register_hook(lambda g, w=w, s=scale: (g + wd * w.detach()) * s)
        if mode != "all":
            w.decay_in_hook = True


def setup_task(model, cfg, run_dir):
    TASKS.get(cfg.task)(model, cfg, run_dir)
