"""Weight initialisations (``--init``), gain from ``--nonlinearity``, fan from ``--mode``.

``--scale-fan`` counts only the kept connections: fan * k (k = fraction kept),
the edge-popup paper's scaled init. The original code multiplied by (1 - k),
which inverts its own meaning of k; we follow the paper.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from utils.registry import Registry

INITS = Registry("init")


@dataclass(frozen=True)
class InitSpec:
    mode: str = "fan_in"
    nonlinearity: str = "relu"
    scale_fan: bool = False
    prune_rate: float = 1.0


def _fan(weight, spec):
    fan = nn.init._calculate_correct_fan(weight, spec.mode)
    return fan * spec.prune_rate if spec.scale_fan else fan


def _std(weight, spec):
    return nn.init.calculate_gain(spec.nonlinearity) / math.sqrt(_fan(weight, spec))


@INITS.register()
def signed_constant(weight, spec):
    std = _std(weight, spec)
    with torch.no_grad():
        weight.copy_(weight.sign() * std)


@INITS.register()
def unsigned_constant(weight, spec):
    with torch.no_grad():
        weight.fill_(_std(weight, spec))


@INITS.register()
def kaiming_normal(weight, spec):
    with torch.no_grad():
        weight.normal_(0.0, _std(weight, spec))


@INITS.register()
def kaiming_uniform(weight, spec):
    bound = math.sqrt(3.0) * _std(weight, spec)
    with torch.no_grad():
        weight.uniform_(-bound, bound)


@INITS.register()
def xavier_normal(weight, spec):
    nn.init.xavier_normal_(weight)


@INITS.register()
def xavier_constant(weight, spec):
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    with torch.no_grad():
        weight.copy_(weight.sign() * math.sqrt(2.0 / (fan_in + fan_out)))


@INITS.register()
def standard(weight, spec):
    """PyTorch's own Conv2d default."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


def init_weight(name, weight, spec):
    INITS.get(name)(weight, spec)
