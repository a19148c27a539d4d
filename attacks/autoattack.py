"""AutoAttack (Croce & Hein, 2020) via torchattacks: the standard version for deterministic
models, the ``rand`` version for randomised ones (R2S, ``SampleSubnetConv``).

The attacks themselves are torchattacks', not a re-implementation, set to the
reference AutoAttack's settings where torchattacks differs:

* APGD/APGD-T/FAB run ``steps`` iterations (CLI ``--aa_steps``, default 100, as the
  reference; torchattacks builds them with 10);
* APGD-T and FAB-T attack the 9 most likely other classes (the reference's
  ``n_target_classes = 9``; torchattacks uses ``n_classes - 1``, which differs when a
  data set has other than 10 classes), fewer only when there are fewer classes;
* the ``rand`` version: APGD-CE and APGD-DLR, 1 restart, EOT over 20 forward passes.

Every AutoAttack run is in fp32 (autocast off): its losses are not scaled, so under
fp16 autocast small input gradients would flush to zero. Parameters are excluded from
autograd while it runs (FAB calls ``backward()``), and the caller's RNG state is
restored (torchattacks seeds torch's global RNG with ``seed``). Like every attack
here, the functions are ``(model, x, y) -> x_adv`` in [0, 1] pixel space. The factory
registered as ``--eval_attack autoattack`` lives in ``trainers.evaluate``.

torchattacks already skips finished work between its attacks: ``MultiAttack`` passes
only the examples still classified correctly to the next attack, and each attack's
restarts and target classes run on those only (Square queries only unbroken
examples). Within one APGD run every example takes every step by design (it keeps
the highest-loss point), so nothing is compacted here.
"""
import contextlib

import torch

from attacks.pgd import input_grad_only, is_randomized, project

REFERENCE_TARGET_CLASSES = 9  # APGD-T / FAB-T in the reference AutoAttack
RAND_EOT_ITER = 20  # forward passes averaged per gradient in the reference 'rand' version


def build_autoattack(model, epsilon, n_classes, seed=0, steps=100, n_queries=5000, version="standard",
                     eot_iter=RAND_EOT_ITER):
    """torchattacks.AutoAttack (norm 'Linf') with the reference settings (module docstring).

    ``epsilon`` is in [0, 1] units; ``n_queries`` is Square's query budget.
    """
    import torchattacks

    attack = torchattacks.AutoAttack(model, norm="Linf", eps=epsilon, version=version,
                                     n_classes=n_classes, seed=seed, verbose=False)
    for member in attack._autoattack.attacks:
        if isinstance(member, (torchattacks.APGD, torchattacks.APGDT, torchattacks.FAB)):
            member.steps = int(steps)
        if isinstance(member, (torchattacks.APGDT, torchattacks.FAB)):
            member.n_target_classes = max(1, min(REFERENCE_TARGET_CLASSES, n_classes - 1))
        if isinstance(member, torchattacks.APGD) and version == "rand":
            member.eot_iter = int(eot_iter)
        if isinstance(member, torchattacks.Square):
            member.n_queries = int(n_queries)
    return attack


def num_classes(model, x):
    """Number of classes, read off the model's output for one example."""
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


@contextlib.contextmanager
def _isolated(model, x):
    """fp32, parameters out of autograd, and the caller's RNG state kept."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), input_grad_only(model), \
            torch.autocast(x.device.type, enabled=False):
        yield


def _in_ball(x, x_adv, epsilon):
    # torchattacks already keeps its output in the ball; this only removes float round-off.
    return (x + project(x, x_adv.to(x.dtype) - x, epsilon)).detach()


def autoattack(model, x, y, epsilon, seed=0, steps=100, n_queries=5000):
    """AutoAttack adversarial examples for ``(x, y)``, inside the eps-ball and [0, 1].

    A randomised model gets the ``rand`` version (``autoattack_rand``).
    """
    if x.shape[0] == 0:
        return x
    if is_randomized(model):
        return autoattack_rand(model, x, y, epsilon, seed=seed, steps=steps)
    with _isolated(model, x):
        attack = build_autoattack(model, epsilon, num_classes(model, x.float()), seed, steps, n_queries)
        x_adv = attack(x.float(), y)
    return _in_ball(x, x_adv, epsilon)


def autoattack_rand(model, x, y, epsilon, seed=0, steps=100, eot_iter=RAND_EOT_ITER):
    """AutoAttack ``rand`` (APGD-CE, APGD-DLR, EOT over ``eot_iter`` passes) on a randomised model.

    Each of the two attacks runs on every example (torchattacks' cascade would pass to
    APGD-DLR only the examples one random forward pass still classifies correctly); per
    example the output with the lower expected accuracy is kept (exact over the members
    of an R2S model, else estimated from ``eot_iter`` passes; ties keep APGD-CE's).
    """
    from attacks.randomized import expected_correct

    if x.shape[0] == 0:
        return x
    with _isolated(model, x):
        attack = build_autoattack(model, epsilon, num_classes(model, x.float()), seed, steps,
                                  version="rand", eot_iter=eot_iter)
        outs = [_in_ball(x, member(x.float(), y), epsilon) for member in attack._autoattack.attacks]
        best, best_ok = outs[0], expected_correct(model, outs[0], y, draws=eot_iter)
        for out in outs[1:]:
            ok = expected_correct(model, out, y, draws=eot_iter)
            better = (ok < best_ok).view(-1, *[1] * (x.dim() - 1))
            best, best_ok = torch.where(better, out, best), torch.minimum(ok, best_ok)
    return best


def autoattack_from_config(cfg):
    """The evaluation attack for ``--eval_attack autoattack`` (eps = --epsilon/255)."""
    eps, seed, steps = cfg.epsilon / 255, int(cfg.seed or 0), int(getattr(cfg, "aa_steps", 100))

    def attack(model, x, y):
        return autoattack(model, x, y, eps, seed=seed, steps=steps)

    return attack
