"""AutoAttack (Croce & Hein, 2020) for single tickets and dense models, via torchattacks.

The attack itself is torchattacks' ``AutoAttack`` (standard version: APGD-CE,
APGD-T, FAB-T, Square with 5000 queries), not a re-implementation. One change:
torchattacks builds its APGD/APGD-T/FAB members with 10 iterations, while the
reference AutoAttack uses 100; ``steps`` (CLI ``--aa_steps``, default 100) sets
them, so numbers compare with published AutoAttack results.

Like every attack here, :func:`autoattack` is ``(model, x, y) -> x_adv`` in [0, 1]
pixel space. Parameters are excluded from autograd while it runs (FAB calls
``backward()``, which would otherwise fill the parameters' ``.grad``, and masked
layers then use their cached masked weight). torchattacks seeds torch's global
RNG with ``seed`` inside each member attack; the caller's RNG state is restored.
The factory registered as ``--eval_attack autoattack`` lives in
``trainers.evaluate`` and imports this module only when it is used.
"""
import torch

from attacks.pgd import input_grad_only, project


def build_autoattack(model, epsilon, n_classes, seed=0, steps=100, n_queries=5000):
    """torchattacks.AutoAttack (norm 'Linf', version 'standard') with the iteration counts set.

    ``epsilon`` is in [0, 1] units; ``n_queries`` is Square's query budget.
    """
    import torchattacks

    attack = torchattacks.AutoAttack(model, norm="Linf", eps=epsilon, version="standard",
                                     n_classes=n_classes, seed=seed, verbose=False)
    for member in attack._autoattack.attacks:
        if isinstance(member, (torchattacks.APGD, torchattacks.APGDT, torchattacks.FAB)):
            member.steps = int(steps)
        if isinstance(member, torchattacks.Square):
            member.n_queries = int(n_queries)
    return attack


def num_classes(model, x):
    """Number of classes, read off the model's output for one example."""
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def autoattack(model, x, y, epsilon, seed=0, steps=100, n_queries=5000):
    """AutoAttack adversarial examples for ``(x, y)``, inside the eps-ball and [0, 1]."""
    if x.shape[0] == 0:
        return x
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), input_grad_only(model):
        attack = build_autoattack(model, epsilon, num_classes(model, x), seed, steps, n_queries)
        x_adv = attack(x, y)
    # torchattacks already keeps its output in the ball; this only removes float round-off.
    return (x + project(x, x_adv.to(x.dtype) - x, epsilon)).detach()


def autoattack_from_config(cfg):
    """The evaluation attack for ``--eval_attack autoattack`` (eps = --epsilon/255)."""
    eps, seed, steps = cfg.epsilon / 255, int(cfg.seed or 0), int(getattr(cfg, "aa_steps", 100))

    def attack(model, x, y):
        return autoattack(model, x, y, eps, seed=seed, steps=steps)

    return attack
