"""L-inf attacks in [0, 1] pixel space: small pure functions ``(model, x, y, ...) -> x_adv``.

All radii and steps are in [0, 1] units (callers divide the CLI's 0-255 values
by 255). Gradients are taken with respect to the input only: parameters are
temporarily excluded from autograd, so no score/weight gradient is computed and
masked layers use their cached masked weights (a frozen ticket costs a dense pass).
Attacks never change the model's train/eval mode; the caller chooses it
(training attacks: train mode; evaluation: eval mode).
"""
import contextlib

import torch
import torch.nn.functional as F

from utils.registry import Registry

ATTACKS = Registry("attack")
# fp16 autocast: the attack loss is multiplied by this before backward (and the
# gradient divided by it after, in fp32) so small input gradients do not flush
# to zero in half precision; the signed steps are unchanged by the scale.
FP16_ATTACK_LOSS_SCALE = 1024.0


@contextlib.contextmanager
def input_grad_only(model):
    """Turn off requires_grad on the model's parameters for the duration."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def project(x, delta, epsilon):
    """Clamp ``delta`` to the eps-ball and so that ``x + delta`` stays in [0, 1]."""
    delta = delta.clamp(-epsilon, epsilon)
    return torch.max(torch.min(delta, 1.0 - x), -x)


def random_start(x, epsilon):
    """Uniform start in [-eps, eps], projected to the valid image range.

    Drawn one channel at a time (all examples of channel 0, then channel 1, ...),
    the order in which the original code draws it, so a seeded run takes the
    same random numbers for the same start (the original draws in normalised
    units, eps/std per channel: the same uniform variates, scaled).
    """
    delta = torch.empty_like(x)
    if delta.dim() < 2:
        return project(x, delta.uniform_(-epsilon, epsilon), epsilon)
    for c in range(delta.size(1)):
        delta[:, c].uniform_(-epsilon, epsilon)
    return project(x, delta, epsilon)


def input_gradient(model, x, delta, y, samples=1, loss_fn=None):
    """Gradient of the mean cross-entropy (or ``loss_fn(logits, y)``) w.r.t. ``delta``
    (averaged over ``samples`` forward passes: EOT for randomised models) and the
    logits of the first pass."""
    loss_fn = loss_fn or F.cross_entropy
    grad, first_logits = torch.zeros_like(delta), None
    scale = FP16_ATTACK_LOSS_SCALE if _fp16_autocast(x.device) else 1.0
    with input_grad_only(model), torch.enable_grad():
        for _ in range(samples):
            d = delta.detach().requires_grad_(True)
            logits = model(x + d)
            loss = loss_fn(logits.float(), y)
            grad += torch.autograd.grad(loss * scale if scale != 1.0 else loss, d)[0]
            first_logits = logits.detach() if first_logits is None else first_logits
    return grad / (samples * scale), first_logits


def _fp16_autocast(device):
    return (device.type == "cuda" and torch.is_autocast_enabled("cuda")
            and torch.get_autocast_dtype("cuda") == torch.float16)


def sign_step(x, delta, grad, step, epsilon):
    """One signed-gradient ascent step followed by projection.

    A NaN gradient entry (an overflow under mixed precision) moves nothing
    rather than turning the example into NaNs; +-inf keep their sign.
    """
    return project(x, delta + step * torch.nan_to_num(grad.sign(), nan=0.0), epsilon)


@ATTACKS.register("pgd")
def pgd(model, x, y, epsilon, step, iters, restarts=1, early_stop=False, eot_samples=1, loss_fn=None):
    """PGD with uniform random start, ``iters`` steps of ``step``, ascending
    ``loss_fn(logits, y)`` (default: cross-entropy; training passes its criterion).

    early_stop (evaluation): at each step only examples still classified correctly
    move, and the loop ends once none is. Across restarts the perturbation with
    the highest per-example loss is kept.
    """
    best_delta, best_loss = torch.zeros_like(x), None
    for _ in range(max(1, restarts)):
        delta = random_start(x, epsilon)
        for _ in range(iters):
            grad, logits = input_gradient(model, x, delta, y, eot_samples, loss_fn)
            if early_stop:
                active = (logits.argmax(1) == y).view(-1, *[1] * (x.dim() - 1))
                if not active.any():
                    break
                delta = torch.where(active, sign_step(x, delta, grad, step, epsilon), delta)
            else:
                delta = sign_step(x, delta, grad, step, epsilon)
        if restarts <= 1:
            return (x + delta).detach()
        with torch.no_grad():
            loss = F.cross_entropy(model(x + delta).float(), y, reduction="none")
        if best_loss is None:
            best_delta, best_loss = delta, loss
        else:
            better = (loss >= best_loss).view(-1, *[1] * (x.dim() - 1))
            best_delta = torch.where(better, delta, best_delta)
            best_loss = torch.max(best_loss, loss)
    return (x + best_delta).detach()


@ATTACKS.register("fgsm")
def fgsm(model, x, y, epsilon, alpha):
    """FGSM from a zero start, one step of ``alpha``."""
    delta = torch.zeros_like(x)
    grad, _ = input_gradient(model, x, delta, y)
    return (x + sign_step(x, delta, grad, alpha, epsilon)).detach()


@ATTACKS.register("fgsm-rs")
def fgsm_rs(model, x, y, epsilon):
    """FGSM with a uniform random start and one step of 1.25 * eps (Wong et al.)."""
    delta = random_start(x, epsilon)
    grad, _ = input_gradient(model, x, delta, y)
    return (x + sign_step(x, delta, grad, 1.25 * epsilon, epsilon)).detach()


def pgd20(model, x, y, epsilon, step=2 / 255, iters=20, restarts=1, eot_samples=1):
    """The evaluation attack: PGD-20, step 2/255, per-example early stop."""
    return pgd(model, x, y, epsilon, step, iters, restarts=restarts, early_stop=True,
               eot_samples=eot_samples)


def _per_example_loss(logits, y):
    return F.cross_entropy(logits.float(), y, reduction="none")


@ATTACKS.register("pgd-transfer")
def pgd_transfer(model, x, y, epsilon, step=2 / 255, iters=20):
    """Transfer examples from a source model: PGD without early stop.

    Every example moves for all ``iters`` steps (an early stop just past the
    source's boundary makes examples that transfer poorly); per example the
    iterate with the highest source loss (start and final iterate included) is kept.
    """
    delta = random_start(x, epsilon)
    best_delta, best_loss = delta, None
    for _ in range(iters):
        grad, logits = input_gradient(model, x, delta, y)
        best_delta, best_loss = _keep_higher(delta, _per_example_loss(logits, y), best_delta, best_loss)
        delta = sign_step(x, delta, grad, step, epsilon)
    with torch.no_grad():
        loss = _per_example_loss(model(x + delta), y)
    best_delta, _ = _keep_higher(delta, loss, best_delta, best_loss)
    return (x + best_delta).detach()


def _keep_higher(delta, loss, best_delta, best_loss):
    """Per example, the perturbation with the higher loss (ties keep the later one)."""
    if best_loss is None:
        return delta, loss
    better = (loss >= best_loss).view(-1, *[1] * (delta.dim() - 1))
    return torch.where(better, delta, best_delta), torch.max(loss, best_loss)
