"""Evaluation: natural accuracy and accuracy under an attack (PGD-20 by default).

The model is put in eval mode (BatchNorm running statistics). Examples are
sharded across ranks by the loader; counts are summed across ranks.
"""
import contextlib
import functools
import inspect

import torch
import torch.nn.functional as F
from tqdm import tqdm

from evaluation.metrics import Meter
from attacks.pgd import pgd20, pgd_transfer
from utils.distributed import DistContext, all_reduce_sum
from utils.provenance import NO_SETTINGS
from utils.registry import Registry

EVAL_ATTACKS = Registry("evaluation attack")


@EVAL_ATTACKS.register("pgd")
def pgd20_attack(cfg):
    """PGD-20, step ``--eval_step`` (2/255 by default), one restart, per-example early stop on the
    still-active examples only (no early stop on a randomised model; see ``attacks.pgd.pgd20``)."""
    return functools.partial(pgd20, epsilon=cfg.epsilon / 255, step=eval_step(cfg))


def eval_step(cfg):
    """The evaluation PGD step in [0, 1] units (``--eval_step`` is in 0-255 units)."""
    return float(getattr(cfg, "eval_step", 2) or 2) / 255


def _bound(partial):
    """The arguments a ``functools.partial`` of an attack runs with: its defaults, then its keywords."""
    return dict(_defaults(partial.func), **partial.keywords)


@EVAL_ATTACKS.register("autoattack")
def autoattack_attack(cfg):
    """AutoAttack through the reference implementation (pyautoattack, fp32): ``--aa_version``
    (standard, plus, rand), rand on a randomised model (imported only when used, see
    attacks.autoattack). The returned callable's ``protocol()`` says what ran."""
    from attacks.autoattack import autoattack_from_config
    return autoattack_from_config(cfg)


def _defaults(fn):
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def randomized_config(cfg):
    """Whether ``cfg`` builds a model whose forward pass is random (masks sampled at every pass)."""
    return getattr(cfg, "conv_type", None) == "SampleSubnetConv"


def attack_settings(attack, cfg):
    """What the named evaluation attack runs under ``cfg`` (steps, step size in 1/255, restarts,
    the early-stop rule applied), read off the attack functions' own defaults and, for
    AutoAttack, off the reference's objects; for ``utils.provenance.eval_protocol``."""
    random_model = randomized_config(cfg)
    if attack == "pgd":  # attacks.pgd.pgd20, as pgd20_attack binds it
        d = _bound(pgd20_attack(cfg))
        return {"steps": d["iters"], "step_size": round(d["step"] * 255, 6), "restarts": d["restarts"],
                "early_stop": not random_model,
                "early_stop_rule": "none (randomised model: one forward pass says little)" if random_model else
                "per example: an example stops moving once the model misclassifies it"}
    if attack == "pgd_transfer":  # evaluation.transfer_examples: both candidates of one trajectory
        d = _bound(transfer_attack(cfg))
        return {"steps": d["iters"], "step_size": round(d["step"] * 255, 6), "restarts": 1, "early_stop": False,
                "early_stop_rule": "none on the highest-loss candidate; the paper candidate is the early-stopped "
                                   "iterate",
                "iterate": "per target and example the worse of the early-stopped and highest-source-loss iterates"}
    if attack == "autoattack":
        from attacks.autoattack import configured_settings
        ran = configured_settings(cfg, randomized=random_model)
        first = ran["settings"][ran["attacks"][0]]
        return {"steps": first["n_iter"], "step_size": None, "restarts": first["restarts"],
                "early_stop": False if ran["version"] == "rand" and random_model else "cascade",
                "early_stop_rule": ran["early_stop_rule"], "implementation": ran["implementation"],
                "version": ran["version"], "reduced": ran["reduced"], "autoattack": ran}
    return dict(NO_SETTINGS)


def transfer_attack(cfg):
    """The highest-loss transfer iterate's PGD (``attacks.pgd.pgd_transfer``) at ``--eval_step``."""
    return functools.partial(pgd_transfer, epsilon=cfg.epsilon / 255, step=eval_step(cfg))


def autocast(amp, device):
    """bf16/fp16 autocast on CUDA; a no-op elsewhere."""
    if device.type != "cuda" or amp in (None, "none"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def to_input(x, device, channels_last=False):
    """Move an image batch to ``device``; channels-last on CUDA when asked (the
    format ``prepare`` gives the model there), so no conv converts its input."""
    x = x.to(device, non_blocking=True)
    if channels_last and device.type == "cuda" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def evaluate(model, loader, device, attack=None, amp="none", ctx=DistContext(), desc="eval",
             limit=None, progress=False, channels_last=False):
    """Top-1/top-5 (percent) and loss on ``loader``; ``attack(model, x, y) -> x_adv``.

    ``limit`` stops after that many examples (on this rank). ``channels_last``:
    inputs in the model's channels-last memory format (see ``to_input``).
    """
    was_training = model.training
    model.eval()
    meter = Meter()
    batches = tqdm(loader, desc=desc, leave=False, disable=not (progress and ctx.is_main))
    for x, y in batches:
        if limit is not None and meter.n >= limit:
            break
        x, y = to_input(x, device, channels_last), y.to(device, non_blocking=True)
        if limit is not None:
            x, y = x[:limit - meter.n], y[:limit - meter.n]
        with autocast(amp, device):
            if attack is not None:
                x = attack(model, x, y)
            with torch.no_grad():
                logits = model(x)
        meter.update(logits, y, F.cross_entropy(logits.float(), y))
    model.train(was_training)
    return Meter.from_totals(all_reduce_sum(ctx, meter.totals(), device)).summary()
