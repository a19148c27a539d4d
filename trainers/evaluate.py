"""Evaluation: natural accuracy and accuracy under an attack (PGD-20 by default).

The model is put in eval mode (BatchNorm running statistics). Examples are
sharded across ranks by the loader; counts are summed across ranks.
"""
import contextlib
import functools

import torch
import torch.nn.functional as F
from tqdm import tqdm

from trainers.metrics import Meter
from attacks.pgd import pgd20
from utils.distributed import DistContext, all_reduce_sum
from utils.registry import Registry

EVAL_ATTACKS = Registry("evaluation attack")


@EVAL_ATTACKS.register("pgd")
def pgd20_attack(cfg):
    """PGD-20, step 2/255, one restart, per-example early stop on the still-active examples
    only (no early stop on a randomised model; see ``attacks.pgd.pgd20``)."""
    return functools.partial(pgd20, epsilon=cfg.epsilon / 255)


@EVAL_ATTACKS.register("autoattack")
def autoattack_attack(cfg):
    """AutoAttack: standard version, or rand on a randomised model (torchattacks, fp32;
    imported only when used, see attacks.autoattack)."""
    from attacks.autoattack import autoattack_from_config
    return autoattack_from_config(cfg)


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
