"""``--trainer ss``: score search with a sparsity penalty on the scores.

The original accepts ``--trainer ss`` but has no such module (the import fails).
The code it derives from (edge-popup's ``trainers/ss.py``, meant for
``SampleSubnetConv``, whose mask keeps each weight with probability
sigmoid(score)) adds ``1e-8 * sum(sigmoid(scores))``, the expected number of kept
weights, to the loss; that version crashes building the penalty and, past that,
backpropagates the penalty alone, so the task loss would never reach the scores.
Ours minimises ``criterion + --ss_l1 * sum over score tensors of sigmoid(score)``
(default coefficient 1e-8, temperature 1, as there). The training loss it reports
includes the penalty. With a top-k ``--conv_type`` the penalty only pushes raw
scores down, so it is meant for SampleSubnetConv.
"""
import torch

from models.conv_type import CONV_TYPES, FixedSubnetConv, MaskedConv
from trainers.train import TRAINERS, train_epoch
from utils.errors import UserError


def score_l1(model):
    """Sum of sigmoid(score) over every trainable score tensor (the expected kept count)."""
    total = None
    for name, p in model.named_parameters():
        if name.endswith("scores") and p.requires_grad:
            term = torch.sigmoid(p).sum()
            total = term if total is None else total + term
    return total


class PenalisedLoss:
    """``criterion(logits, y) + coef * score_l1(model)``."""

    def __init__(self, criterion, model, coef):
        self.criterion, self.model, self.coef = criterion, model, float(coef)

    def __call__(self, logits, y):
        penalty = score_l1(self.model)
        loss = self.criterion(logits, y)
        return loss if penalty is None else loss + self.coef * penalty


@TRAINERS.register("ss")
def train_ss(model, loader, optimizer, criterion, cfg, device, epoch, **kwargs):
    return train_epoch(model, loader, optimizer, PenalisedLoss(criterion, model, cfg.ss_l1), cfg, device,
                       epoch, **kwargs)


def check(cfg, task, ctx):
    """The penalty needs scores that train: main.py --task search with a masked, non-fixed layer type."""
    layer = CONV_TYPES.get(cfg.conv_type or "SubnetConv")
    if task != "search" or not issubclass(layer, MaskedConv) or issubclass(layer, FixedSubnetConv):
        raise UserError("--trainer ss penalises the scores, so it needs main.py --task search and a --conv_type "
                        "whose scores train (SampleSubnetConv, as intended, or SubnetConv and kin)")
    if cfg.ss_l1 < 0:
        raise UserError(f"--ss_l1 must be >= 0, got {cfg.ss_l1}")


train_ss.check = check
