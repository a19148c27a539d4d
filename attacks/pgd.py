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


def input_gradient(model, x, delta, y, samples=1, loss_fn=None, reduction="mean"):
    """Gradient w.r.t. ``delta`` of the cross-entropy, or of ``loss_fn(logits, y)``
    (training passes its criterion), averaged over ``samples`` forward passes (EOT
    for randomised models), and the logits of the first pass.

    ``reduction`` (cross-entropy only): "mean" over the batch (training attacks, as
    the original) or "sum" (each example's gradient then does not depend on the
    batch it is in, which the compacted evaluation PGD relies on). Only the sign is
    ever used.
    """
    grad, first_logits = torch.zeros_like(delta), None
    scale = FP16_ATTACK_LOSS_SCALE if _fp16_autocast(x.device) else 1.0
    with input_grad_only(model), torch.enable_grad():
        for _ in range(samples):
            d = delta.detach().requires_grad_(True)
            logits = model(x + d)
            loss = loss_fn(logits.float(), y) if loss_fn else F.cross_entropy(logits.float(), y, reduction=reduction)
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


def is_randomized(model):
    """True when a forward pass of ``model`` is random: an R2S switch (``random_forward``)
    or masks sampled at every pass (``SampleSubnetConv``). Early stop, which trusts one
    forward pass, is then wrong (see ``pgd20``)."""
    flag = getattr(model, "random_forward", None)
    if flag is not None:
        return bool(flag)
    from models.conv_type import SampleSubnetConv
    return any(isinstance(m, SampleSubnetConv) for m in model.modules())


def _view(mask, like):
    """A per-example boolean as a mask broadcastable to ``like``."""
    return mask.view(-1, *[1] * (like.dim() - 1))


@ATTACKS.register("pgd")
def pgd(model, x, y, epsilon, step, iters, restarts=1, early_stop=False, eot_samples=1, compact=True, loss_fn=None):
    """PGD with uniform random start, ``iters`` steps of ``step``, ascending
    ``loss_fn(logits, y)`` (default: cross-entropy; training passes its criterion).

    early_stop (evaluation): at each step only examples still classified correctly
    move, and the loop ends once none is. ``compact`` then runs each step on the
    still-active examples only (same perturbations: per-example gradients, model in
    eval mode; the random start is drawn for the whole batch first, so the RNG use
    is the same). Across restarts the perturbation kept per example is one that is
    misclassified if any is, then the one with the highest loss.
    """
    best_delta, best_wrong, best_loss = None, None, None
    for _ in range(max(1, restarts)):
        delta = random_start(x, epsilon)
        if early_stop:
            delta = _early_stopped(model, x, y, delta, epsilon, step, iters, eot_samples, compact, loss_fn)
        else:
            for _ in range(iters):
                grad, _ = input_gradient(model, x, delta, y, eot_samples, loss_fn)
                delta = sign_step(x, delta, grad, step, epsilon)
        if restarts <= 1:
            return (x + delta).detach()
        with torch.no_grad():
            logits = model(x + delta)
        wrong, loss = logits.argmax(1) != y, _per_example_loss(logits, y)
        if best_delta is None:
            best_delta, best_wrong, best_loss = delta, wrong, loss
            continue
        # ties keep the later restart (as the original's >= on the loss)
        better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss >= best_loss))
        best_delta = torch.where(_view(better, x), delta, best_delta)
        best_wrong, best_loss = best_wrong | wrong, torch.where(better, loss, best_loss)
    return (x + best_delta).detach()


def _early_stopped(model, x, y, delta, epsilon, step, iters, eot_samples, compact, loss_fn=None):
    """The early-stopped PGD loop from ``delta``; an example misclassified at a step never moves again."""
    if not compact:
        for _ in range(iters):
            grad, logits = input_gradient(model, x, delta, y, eot_samples, loss_fn, "sum")
            active = logits.argmax(1) == y
            if not active.any():
                break
            delta = torch.where(_view(active, x), sign_step(x, delta, grad, step, epsilon), delta)
        return delta
    delta, idx = delta.clone(), torch.arange(len(y), device=y.device)
    for _ in range(iters):
        xa, da, ya = x[idx], delta[idx], y[idx]
        grad, logits = input_gradient(model, xa, da, ya, eot_samples, loss_fn, "sum")
        active = logits.argmax(1) == ya
        if not active.any():
            break
        idx = idx[active]
        delta[idx] = sign_step(xa[active], da[active], grad[active], step, epsilon)
    return delta


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


def pgd20(model, x, y, epsilon, step=2 / 255, iters=20, restarts=1, eot_samples=1, compact=True):
    """The evaluation attack: PGD-20, step 2/255, per-example early stop (compacted
    batch, see ``pgd``). A randomised model (``is_randomized``) is attacked without
    early stop: one random forward pass fooled says little about the next."""
    return pgd(model, x, y, epsilon, step, iters, restarts=restarts, early_stop=not is_randomized(model),
               eot_samples=eot_samples, compact=compact)


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
