"""Weight initialisations (``--init``), gain from ``--nonlinearity``, fan from ``--mode``.

``--scale-fan`` is the original's scaled init: ``fan * (1 - k)`` (k = fraction
KEPT), applied by ``signed_constant``, ``unsigned_constant`` and
``kaiming_normal`` only, in every layer the builder makes, dense ones included.
``--scale-fan-kept`` is the opt-in correction (the edge-popup paper's intent):
``fan * k``, the kept connections, applied by every fan-based init (also
``kaiming_uniform``) and in masked layers only (a dense layer keeps all its fan).
"""
import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from utils.errors import UserError
from utils.registry import Registry

INITS = Registry("init")

# inits the original scales under --scale-fan (its kaiming_uniform ignores the flag)
ORIGINAL_SCALED = ("signed_constant", "unsigned_constant", "kaiming_normal")


@dataclass(frozen=True)
class InitSpec:
    mode: str = "fan_in"
    nonlinearity: str = "relu"
    scale_fan: bool = False        # original: fan * (1 - k)
    prune_rate: float = 1.0        # k, fraction kept
    scale_fan_kept: bool = False   # correction: fan * k (masked layers only)


def init_spec_from_config(cfg, prune_rate=None):
    """The InitSpec of a resolved config; ``prune_rate`` overrides cfg.prune_rate."""
    k = cfg.prune_rate if prune_rate is None else prune_rate
    return InitSpec(cfg.mode, cfg.nonlinearity, bool(cfg.scale_fan), float(k),
                    bool(getattr(cfg, "scale_fan_kept", False)))


def spec_for_layer(spec, masked):
    """The spec one layer is initialised with: --scale-fan-kept leaves dense layers unscaled."""
    if spec.scale_fan_kept and not masked:
        return replace(spec, scale_fan_kept=False, scale_fan=False)
    return spec


def _fan(weight, spec, name):
    fan = nn.init._calculate_correct_fan(weight, spec.mode)
    if spec.scale_fan_kept:
        if spec.prune_rate <= 0:
            raise UserError(f"--scale-fan-kept scales the fan by k, which must be positive (got {spec.prune_rate:g})")
        return fan * spec.prune_rate
    if spec.scale_fan and name in ORIGINAL_SCALED:
        scaled = fan * (1 - spec.prune_rate)
        if scaled <= 0:
            raise UserError(f"--scale-fan scales the fan by (1 - k) as the original does, which is "
                            f"{1 - spec.prune_rate:g} at k={spec.prune_rate:g} (the original divides by "
                            "zero); use --scale-fan-kept (fan * k) or drop --scale-fan")
        return scaled
    return fan


def _std(weight, spec, name):
    return nn.init.calculate_gain(spec.nonlinearity) / math.sqrt(_fan(weight, spec, name))


@INITS.register()
def signed_constant(weight, spec):
    std = _std(weight, spec, "signed_constant")
    with torch.no_grad():
        weight.copy_(weight.sign() * std)


@INITS.register()
def unsigned_constant(weight, spec):
    with torch.no_grad():
        weight.fill_(_std(weight, spec, "unsigned_constant"))


@INITS.register()
def kaiming_normal(weight, spec):
    with torch.no_grad():
        weight.normal_(0.0, _std(weight, spec, "kaiming_normal"))


@INITS.register()
def kaiming_uniform(weight, spec):
    bound = math.sqrt(3.0) * _std(weight, spec, "kaiming_uniform")
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
