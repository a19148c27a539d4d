"""--discard_mode and --progressive_prune, as the original computes them.

After every ``discard_epoch``-th epoch (0-based epoch e with (e+1) % discard_epoch == 0)
the lowest ``min(discard_rate * (e+1)//discard_epoch, 1)`` fraction of each layer's
|scores|, taken from the current scores, becomes the discarded set; until the next
such epoch the gradients of those scores are zeroed before every optimiser step of
adversarial training. The scores themselves are never zeroed (the original's
zeroing edits a copy), so SGD's weight decay and momentum still move them, and a
later discard set is chosen afresh. With --progressive_prune (which acts only with
--discard_mode), k is 0.9 minus the same fraction: 0.9 - min(rate * (e // discard_epoch), 1)
for epoch e, with no floor (k <= 0 keeps no weight).

The discarded sets are loop state: they live on the layers (``discard_mask``) and in
the checkpoint's ``discard_masks``, so a resumed run masks what the run it continues did.
"""
import logging

import torch

from models import set_model_prune_rate
from models.conv_type import FixedSubnetConv, MaskedConv, SampleSubnetConv

log = logging.getLogger("rst")
KEY = "discard_masks"


def progressive_k(cfg, epoch):
    """k (fraction kept) during ``epoch`` (0-based), the original's expression, no floor."""
    return 0.9 - min(cfg.discard_rate * (epoch // max(1, cfg.discard_epoch)), 1)


def discard_fraction(cfg, epoch):
    """Fraction of each layer's scores discarded after ``epoch`` (0 when not a discard epoch)."""
    if (epoch + 1) % max(1, cfg.discard_epoch):
        return 0.0
    return min(cfg.discard_rate * ((epoch + 1) // max(1, cfg.discard_epoch)), 1)


def discard_layers(model):
    """(name, layer) of every layer whose top-k scores train (SampleSubnetConv and
    FixedSubnetConv have no top-k of trained scores to discard from)."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, MaskedConv) and not isinstance(m, (SampleSubnetConv, FixedSubnetConv))]


def lowest_scores(scores, fraction):
    """Bool mask of the int((1 - (1 - fraction)) * n) smallest |scores| (the original's count)."""
    flat = scores.detach().abs().flatten()
    drop = min(flat.numel(), int((1 - (1 - fraction)) * flat.numel()))
    out = torch.zeros_like(flat, dtype=torch.bool)
    if drop > 0:
        out[torch.topk(flat, drop, largest=False, sorted=False).indices] = True
    return out.view_as(scores)


def discard_low_scores(model, fraction, extra):
    """Choose each layer's discarded set anew (``fraction`` > 0); records it in ``extra``."""
    if fraction <= 0:
        return
    masks = {}
    for name, m in discard_layers(model):
        m.discard_mask = lowest_scores(m.scores, fraction)
        masks[name] = m.discard_mask
    extra[KEY] = masks
    log.info("discard_mode: gradients of the lowest %.4g of each layer's |scores| are masked from now on",
             fraction)


def restore(model, extra):
    """Put a checkpoint's discarded sets (``extra['discard_masks']``) back on the layers."""
    masks = extra.get(KEY) or {}
    for name, m in discard_layers(model):
        mask = masks.get(name)
        m.discard_mask = None if mask is None else mask.to(m.scores.device).view_as(m.scores)


def setup(model, cfg, extra, train_full=False):
    """At the start of training: restore a resumed run's discarded sets; say when the
    flags do nothing, as in the original (train_full.py never discards; the gradient
    masking acts only in adversarial training; --progressive_prune needs --discard_mode)."""
    if cfg.progressive_prune and not cfg.discard_mode:
        log.warning("--progressive_prune acts only together with --discard_mode (as in the original); ignored")
    if not cfg.discard_mode:
        return
    if train_full:
        log.warning("--discard_mode does nothing in train_full.py (as in the original)")
    elif not cfg.attack_type:
        log.warning("--discard_mode masks score gradients only in adversarial training (as in the "
                    "original); in this natural run only --progressive_prune's k schedule acts")
    restore(model, extra)


def mask_discarded_grads(model):
    """Zero the gradients of the discarded scores (call between backward and step)."""
    for _, m in discard_layers(model):
        mask = getattr(m, "discard_mask", None)
        if mask is not None and m.scores.grad is not None:
            m.scores.grad.masked_fill_(mask, 0.0)


def set_progressive_k(model, cfg, epoch):
    """Set k for ``epoch`` on every masked layer (no positivity check: the original has no floor)."""
    k = progressive_k(cfg, epoch)
    if k <= 0 and epoch % max(1, cfg.discard_epoch) == 0:
        log.warning("progressive_prune: k = %.4g at epoch %d, so every mask is empty (as in the original)",
                    k, epoch)
    set_model_prune_rate(model, k)
    return k
