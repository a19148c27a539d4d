"""Tasks (``--task``): what is loaded, what trains and what stays frozen.

search      only the scores train: the weight and bias of every module are
            frozen, BatchNorm affine parameters included (as the original's
            freeze_model_weights); --pretrained loads weights first (an RTT is
            drawn from a trained network that way).
ft_inherit  load a searched ticket, freeze its scores (mask), train everything else.
ft_reinit   the same after re-initialising every conv weight with --ft_init.
ft_full     multiply weights by the mask once, then train all weights densely;
            --ft_full_mode edits the gradients of the formerly masked layers as
            the original does (``edit_ft_full_grads``, adversarial training only).
"""
import logging
import os

import torch

from models.conv_type import FixedSubnetConv, MaskedConv
from models.init import init_spec_from_config, init_weight, spec_for_layer
from utils.checkpoint import check_arch, extract_state_dict, load_checkpoint, load_model_state
from utils.errors import UserError
from utils.registry import Registry
from utils.run_dir import prune_rate_dir, run_dir_for

TASKS = Registry("task")
log = logging.getLogger("rst")


def masked(model):
    return [m for m in model.modules() if isinstance(m, MaskedConv)]


def set_trainable(model, weights, scores):
    """Scores train iff ``scores``; every other parameter (conv and linear weights and
    biases, BatchNorm affine) iff ``weights``. FixedSubnetConv scores never train."""
    for name, p in model.named_parameters():
        p.requires_grad_(scores if name.endswith("scores") else weights)
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
    spec = init_spec_from_config(cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):  # the original re-inits every conv, dense ones too
            init_weight(cfg.ft_init, m.weight, spec_for_layer(spec, isinstance(m, MaskedConv)))
    set_trainable(model, weights=True, scores=False)


@TASKS.register("ft_full")
def setup_ft_full(model, cfg, run_dir):
    load_pretrained(model, find_search_checkpoint(cfg, run_dir), cfg)
    with torch.no_grad():
        for m in masked(model):
            kept = m.mask().expand_as(m.weight).bool()
            m.weight.mul_(kept.to(m.weight.dtype))
            m.set_prune_rate(1.0)
            m.ft_kept = kept  # the ticket's mask (its scores are frozen, so it never changes)
    set_trainable(model, weights=True, scores=False)
    if cfg.ft_full_mode != "all" and not cfg.attack_type:
        log.warning("--ft_full_mode %s acts only in adversarial training (--attack_type), as in the "
                    "original; this natural run trains like --ft_full_mode all", cfg.ft_full_mode)


def edit_ft_full_grads(model, cfg):
    """--ft_full_mode, applied between backward and the optimiser step (adversarial training).

    only_zero      the kept weights' gradients are zeroed; SGD's weight decay and
                   momentum still move them (the original's effective behaviour).
    decay_on_zero  add the gradient of wd * ||w_kept||_2 + wd0 * ||w_pruned||_2
                   (non-squared norms; SGD decay is off for these weights, see
                   ``trainers.optim``).
    low_lr_zero    the pruned weights' gradients are scaled by --lr_scale_zero
                   (the original's version edits a copy and does nothing).
    """
    mode = cfg.ft_full_mode
    if cfg.task != "ft_full" or mode == "all":
        return
    for m in model.modules():
        kept, w = getattr(m, "ft_kept", None), getattr(m, "weight", None)
        if kept is None or w is None or not w.requires_grad:
            continue
        if w.grad is None:
            w.grad = torch.zeros_like(w)
        with torch.no_grad():
            if mode == "only_zero":
                w.grad.masked_fill_(kept, 0.0)
            elif mode == "decay_on_zero":
                for part, coef in ((kept, cfg.weight_decay), (~kept, cfg.weight_decay_on_zero)):
                    # d/dw coef * ||w[part]|| = coef * w / ||w[part]|| on part (0 where the norm is 0)
                    sel = w * part
                    norm = sel.norm()
                    w.grad.add_(sel * torch.where(norm > 0, coef / norm, torch.zeros_like(norm)))
            elif mode == "low_lr_zero":
                w.grad.mul_(torch.where(kept, 1.0, cfg.lr_scale_zero).to(w.grad.dtype))


def setup_task(model, cfg, run_dir):
    TASKS.get(cfg.task)(model, cfg, run_dir)
