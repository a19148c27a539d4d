"""``--trainer lottery``: train the dense weights first, then search a ticket in them.

The original accepts ``--trainer lottery`` but has no such module (the import
fails). The code it derives from (edge-popup's ``trainers/lottery.py``) trains
the weights with the scores frozen for the first 6 epochs, then freezes the
weights and trains the scores at ``--prune-rate``; its own version cannot run
here either (it keeps no weights at its k = 0, and the original's search task
leaves the weights out of the optimiser). Ours realises that intent:

* epochs ``< --lottery_epochs`` (default 6): every masked layer keeps all of its
  weights (k = 1) while training; conv weights and biases train, scores are frozen;
* later epochs: k = ``--prune-rate``, weights frozen, scores train (a search).

k is set back to ``--prune-rate`` after every training epoch, so every validation,
and so ``model_best.pth``, measures a ticket at k (in the dense phase: the top-k
of the initial scores in the partly trained weights). The trained dense weights
are the (frozen) weights of every later checkpoint. Training attacks
(``--attack_type``) act in both phases, so the dense phase is adversarial training.
"""
import logging

import torch

from models import set_model_prune_rate
from models.conv_type import CONV_TYPES, FixedSubnetConv, MaskedConv, SampleSubnetConv
from trainers.train import TRAINERS, train_epoch
from utils.distributed import DistContext
from utils.errors import UserError

log = logging.getLogger("rst")


def _train_convs(model, weights, scores):
    """requires_grad of every conv's weight and bias, and of every masked layer's scores."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            for p in (m.weight, m.bias):
                if p is not None:
                    p.requires_grad_(weights)
        if isinstance(m, MaskedConv):
            m.scores.requires_grad_(scores)


def set_phase(model, dense, k):
    """Dense phase: all weights kept, weights train, scores frozen; else the search at k."""
    _train_convs(model, weights=dense, scores=not dense)
    set_model_prune_rate(model, 1.0 if dense else k)


@TRAINERS.register("lottery")
def train_lottery(model, loader, optimizer, criterion, cfg, device, epoch, ctx=DistContext(), **kwargs):
    """One epoch of the phase ``epoch`` falls in (see the module docstring)."""
    dense = epoch < cfg.lottery_epochs
    if epoch == cfg.lottery_epochs:
        log.info("lottery: dense phase over after %d epochs; searching a ticket at k=%s",
                 cfg.lottery_epochs, cfg.prune_rate)
    set_phase(model, dense, float(cfg.prune_rate))
    try:
        return train_epoch(model, loader, optimizer, criterion, cfg, device, epoch, ctx=ctx, **kwargs)
    finally:
        set_model_prune_rate(model, float(cfg.prune_rate))


def check(cfg, task, ctx):
    """Refuse what cannot work, before the run directory exists."""
    layer = CONV_TYPES.get(cfg.conv_type or "SubnetConv")
    if task != "search" or not issubclass(layer, MaskedConv) \
            or issubclass(layer, (FixedSubnetConv, SampleSubnetConv)) or float(cfg.prune_rate) >= 1.0:
        raise UserError("--trainer lottery trains dense weights, then searches a top-k ticket in them: it needs "
                        "main.py --task search, a top-k --conv_type (e.g. SubnetConv) and --prune-rate < 1")
    if cfg.epochs <= cfg.lottery_epochs:
        raise UserError(f"--trainer lottery: --epochs ({cfg.epochs}) must exceed --lottery_epochs "
                        f"({cfg.lottery_epochs}), the dense epochs before the search")
    if ctx.enabled:
        raise UserError("--trainer lottery runs in one process (DDP cannot switch which parameters train); "
                        "start it without torchrun")


def prepare(model, cfg):
    """Before the optimiser is built: it must hold both the weights and the scores."""
    _train_convs(model, weights=True, scores=True)


train_lottery.check = check
train_lottery.prepare = prepare
