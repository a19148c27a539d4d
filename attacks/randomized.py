"""Attacks on randomised models (R2S: one member drawn per forward pass), in [0, 1] pixel space.

Pure functions ``(model, x, y, epsilon, ...) -> x_adv``, registered in
``RANDOMIZED_ATTACKS`` (``evaluation.r2s_eval`` runs every one of them). A model with a
finite, known member set exposes ``num_members`` and ``member(j)`` (a deterministic
view of member j; the switch is uniform), as ``models.r2s.R2S`` does; the attacks then
use the members exactly instead of sampling the switch:

* ``expected_correct``: per example, the probability over the switch of a correct
  prediction (the mean over members), exact;
* ``eot_pgd``: signed steps on the expected cross-entropy gradient, exact (the mean of
  every member's gradient) when the members are at most ``samples``, else ``samples``
  draws of the switch;
* ``ensemble_pgd``: PGD on the cross-entropy of the mean softmax over members (the
  full-knowledge ensemble attack);
* ``arc``: the ARC attack for randomised ensembles (Dbouk & Shanbhag, ICML 2022, L-inf):
  per iteration, a local step towards each member's nearest linearised decision
  boundary, kept only when it does not raise the expected accuracy;
* ``switch_pgd20``: PGD-20 through the switch (each step's gradient is whichever
  member is drawn; no early stop, see ``attacks.pgd.pgd20``).

AutoAttack's ``rand`` version lives in ``attacks.autoattack`` (which imports this module,
never the other way round); ``evaluation.r2s_eval`` adds it with ``--eval_attack autoattack``.

EOT- and ensemble-PGD return, per example, the iterate (random start and last step
included) with the lowest exact expected accuracy, ties broken by the highest mean
cross-entropy over members: sign steps of 2/255 oscillate inside a small ball, so the
last iterate can be weaker than an earlier one, and with a random model the first
iterate that fools one draw is not the strongest. With known members, an example that
every member misclassifies is finished (its expected accuracy is 0 and cannot fall):
EOT-, ensemble-PGD and ARC stop computing it, which changes no accuracy.
"""
import torch
import torch.nn.functional as F

from attacks.pgd import input_grad_only, pgd20, project, random_start, sign_step
from utils.registry import Registry

RANDOMIZED_ATTACKS = Registry("randomised-model attack")
ARC_RHO = 0.05  # ARC's margin past a boundary, as a fraction of epsilon (the paper's value)


def members(model):
    """Deterministic views of every member when ``model`` has a finite member set, else None."""
    n = getattr(model, "num_members", None)
    if n is None or not callable(getattr(model, "member", None)):
        return None
    return [model.member(j) for j in range(int(n))]


def _need_members(model, attack):
    views = members(model)
    if not views:
        raise ValueError(f"{attack} needs a model with a finite member set (num_members, member(j))")
    return views


def member_logits(views, x):
    """Logits of every member, stacked: [members, batch, classes] (no gradient)."""
    with torch.no_grad():
        return torch.stack([v(x).float() for v in views])


def expected_correct(model, x, y, draws=20):
    """Per example, the probability of a correct prediction over the model's randomness:
    the mean over members when they are known (exact), else over ``draws`` forward passes."""
    views = members(model)
    if views:
        return (member_logits(views, x).argmax(2) == y).double().mean(0)
    with torch.no_grad():
        return torch.stack([(model(x).argmax(1) == y).double() for _ in range(max(1, draws))]).mean(0)


def _scores(logits, y):
    """(expected correctness, mean cross-entropy) per example from stacked member logits."""
    ce = torch.stack([F.cross_entropy(m, y, reduction="none") for m in logits]).mean(0)
    return (logits.argmax(2) == y).double().mean(0), ce


def exact_eot_gradient(views, x, delta, y):
    """The mean over members of the input gradient of the summed cross-entropy (the exact
    expectation over the uniform switch), and the members' logits at ``x + delta``."""
    grad, logits = torch.zeros_like(delta), []
    with torch.enable_grad():
        for v in views:
            with input_grad_only(v):
                d = delta.detach().requires_grad_(True)
                out = v(x + d).float()
                grad += torch.autograd.grad(F.cross_entropy(out, y, reduction="sum"), d)[0]
            logits.append(out.detach())
    return grad / len(views), torch.stack(logits)


def sampled_eot_gradient(model, x, delta, y, samples):
    """The input gradient of the summed cross-entropy averaged over ``samples`` forward passes."""
    grad = torch.zeros_like(delta)
    with input_grad_only(model), torch.enable_grad():
        for _ in range(samples):
            d = delta.detach().requires_grad_(True)
            grad += torch.autograd.grad(F.cross_entropy(model(x + d).float(), y, reduction="sum"), d)[0]
    return grad / samples


def eot_gradient(model, x, delta, y, samples):
    """(gradient, exact): exact over the members when there are at most ``samples``, else sampled."""
    views = members(model)
    if views and len(views) <= samples:
        return exact_eot_gradient(views, x, delta, y)[0], True
    return sampled_eot_gradient(model, x, delta, y, samples), False


class _Strongest:
    """Per example, the iterate with the lowest expected correctness, then the highest loss;
    updated on the examples ``idx`` only (the others are finished)."""

    def __init__(self, x):
        self.delta = torch.zeros_like(x)
        self.ok = torch.full((len(x),), float("inf"), dtype=torch.float64, device=x.device)
        self.loss = torch.full((len(x),), -float("inf"), device=x.device)

    def update(self, idx, delta, ok, loss):
        better = (ok < self.ok[idx]) | ((ok == self.ok[idx]) & (loss > self.loss[idx]))
        at = idx[better]
        self.delta[at], self.ok[at], self.loss[at] = delta[better], ok[better], loss[better]

    def unfinished(self, idx):
        """The examples of ``idx`` that some member still classifies correctly."""
        return idx[self.ok[idx] > 0]


def _strongest_iterate(x, y, epsilon, step, iters, estimate, exact):
    """Signed-gradient ascent from a random start; ``estimate(x, delta, y, need_grad)`` gives
    (gradient or None, expected correctness, loss) per example. Returns the strongest iterate.

    With ``exact`` correctness (known members) an example every member misclassifies
    stops: its expected accuracy is 0 and cannot fall further (the rest are unchanged:
    per-example gradients). The random start is drawn for the whole batch first.
    """
    delta, best = random_start(x, epsilon), _Strongest(x)
    idx = torch.arange(len(y), device=y.device)
    for i in range(iters + 1):
        xa, da, ya = x[idx], delta[idx], y[idx]
        grad, ok, loss = estimate(xa, da, ya, i < iters)
        best.update(idx, da, ok, loss)
        if i == iters:
            break
        delta[idx] = sign_step(xa, da, grad, step, epsilon)
        if exact:
            idx = best.unfinished(idx)
            if idx.numel() == 0:
                break
    return (x + best.delta).detach()


@RANDOMIZED_ATTACKS.register("eot_pgd")
def eot_pgd(model, x, y, epsilon, step=2 / 255, iters=20, samples=10):
    """EOT-PGD (no early stop on a draw); per example the strongest iterate by exact expected
    accuracy when the members are known (module docstring). Radii in [0, 1] units."""
    views = members(model)
    exact = bool(views) and len(views) <= samples

    def estimate(xa, da, ya, need_grad):
        if exact:
            grad, logits = exact_eot_gradient(views, xa, da, ya)
            return (grad, *_scores(logits, ya))
        grad = sampled_eot_gradient(model, xa, da, ya, samples) if need_grad else None
        if views:
            return (grad, *_scores(member_logits(views, xa + da), ya))
        ok = expected_correct(model, xa + da, ya, draws=samples)  # an estimate: no known members
        return grad, ok, -ok

    return _strongest_iterate(x, y, epsilon, step, iters, estimate, exact=bool(views))


def _ensemble_loss_gradient(views, x, delta, y):
    """Gradient of the summed cross-entropy of the members' mean softmax, and their logits."""
    with torch.enable_grad(), input_grad_only(views[0]):
        d = delta.detach().requires_grad_(True)
        logits = torch.stack([v(x + d).float() for v in views])
        log_mean = torch.logsumexp(F.log_softmax(logits, dim=2), dim=0)  # log(sum_j p_j), up to log M
        loss = F.nll_loss(log_mean, y, reduction="sum")
        grad = torch.autograd.grad(loss, d)[0]
    return grad, logits.detach()


@RANDOMIZED_ATTACKS.register("ensemble_pgd")
def ensemble_pgd(model, x, y, epsilon, step=2 / 255, iters=20):
    """PGD (no early stop on a draw) on the cross-entropy of the mean softmax over every
    member: the attacker who knows the ensemble. Per example the strongest iterate."""
    views = _need_members(model, "ensemble_pgd")

    def estimate(xa, da, ya, need_grad):
        grad, logits = _ensemble_loss_gradient(views, xa, da, ya)
        return (grad, *_scores(logits, ya))

    return _strongest_iterate(x, y, epsilon, step, iters, estimate, exact=True)


def nearest_boundary(view, z):
    """For a deterministic model at inputs ``z``: per example the L-inf distance ``zeta`` to
    the nearest linearised decision boundary of its predicted class, the signed unit
    step ``g`` towards it, and the L1-normalised direction ``w`` (for ARC's step rule)."""
    with torch.enable_grad(), input_grad_only(view):
        zz = z.detach().requires_grad_(True)
        out = view(zz).float()
        classes = out.shape[1]
        eye = torch.eye(classes, device=z.device).unsqueeze(1).expand(classes, *out.shape)
        jac = torch.autograd.grad(out, zz, grad_outputs=eye, is_grads_batched=True)[0]  # [C, B, ...]
    out, jac = out.detach(), jac.transpose(0, 1)  # [B, C, ...]
    pred = out.argmax(1)
    rows = torch.arange(len(pred), device=z.device)
    w = jac[rows, pred].unsqueeze(1) - jac  # gradient of (f_pred - f_j), [B, C, ...]
    norm1 = w.flatten(2).abs().sum(2)
    zeta = (out[rows, pred].unsqueeze(1) - out).abs() / (norm1 + 1e-10)
    zeta[rows, pred] = float("inf")
    j = zeta.argmin(1)
    w_j, n_j = w[rows, j], norm1[rows, j].view(-1, *[1] * (z.dim() - 1))
    return zeta[rows, j], -torch.sign(w_j), -w_j / (n_j + 1e-10)


@RANDOMIZED_ATTACKS.register("arc")
def arc(model, x, y, epsilon, step=2 / 255, iters=20):
    """ARC (L-inf) against the uniform switch over the model's members, from a random start.

    Each iteration builds a local step of L-inf size ``step`` around the current point by
    visiting the members in turn: move towards member i's nearest linearised boundary
    (far enough to cross it when it lies within ``step``), and keep the move only if the
    exact expected accuracy does not rise. The iteration's point is accepted under the
    same rule, against the point it started from (the random start, not the clean image:
    the returned point is never worse than the start). Examples every member
    misclassifies stop. Radii in [0, 1] units.
    """
    views = _need_members(model, "arc")
    delta = random_start(x, epsilon)
    ok_best = expected_correct(model, x + delta, y)  # the start point's: the result is never worse than it
    idx = torch.arange(len(y), device=y.device)
    for _ in range(iters):
        idx = idx[ok_best[idx] > 0]
        if idx.numel() == 0:
            break
        xa, ya = x[idx], y[idx]
        moved = project(xa, delta[idx] + _arc_local_step(model, views, xa, ya, delta[idx], ok_best[idx],
                                                         epsilon, step), epsilon)
        ok = expected_correct(model, xa + moved, ya)
        keep = ok <= ok_best[idx]
        delta[idx[keep]], ok_best[idx] = moved[keep], torch.minimum(ok_best[idx], ok)
    return (x + delta).detach()


def _arc_local_step(model, views, x, y, delta, ok_start, epsilon, step):
    """One ARC iteration's local perturbation (L-inf size ``step``) around ``x + delta``."""
    rho, shape = ARC_RHO * epsilon, (-1,) + (1,) * (x.dim() - 1)
    local, ok_local = torch.zeros_like(x), ok_start.clone()
    for i, view in enumerate(views):
        zeta, g, w = nearest_boundary(view, x + delta + local)
        beta = torch.full_like(zeta, step)
        if i > 0:  # far enough to cross member i's boundary, given the moves kept so far
            dot = (w * local).flatten(1).sum(1)
            close = zeta < step
            beta[close] = step / (step - zeta[close] + 1e-10) * (zeta[close] - dot[close]).abs() + rho
        cand = local + beta.view(shape) * g
        cand = step * cand / (cand.flatten(1).abs().amax(1).view(shape) + 1e-10)
        ok = expected_correct(model, x + project(x, delta + cand, epsilon), y)
        keep = ok <= ok_local
        local[keep], ok_local = cand[keep], torch.minimum(ok_local, ok)
    return local


@RANDOMIZED_ATTACKS.register("switch_pgd20")
def switch_pgd20(model, x, y, epsilon, step=2 / 255, iters=20, restarts=1):
    """PGD-20 (step ``step``, [0, 1] units) through the random switch, without early stop (``attacks.pgd.pgd20``
    on a randomised model); the last iterate."""
    return pgd20(model, x, y, epsilon, step, iters, restarts=restarts)

