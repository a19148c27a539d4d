"""Whether a run has converged, judged from its validation history (results.json ``history``).

Rule ``last_third`` (the digits profiles): a run has converged when its selection
metric (PGD-20 accuracy when an attack is set, else natural accuracy, measured on
the selection split) improved by at most a tolerance during the last third of its
epochs: max over the validations of epochs e >= 2/3·epochs is at most the max over
the earlier validations plus the tolerance. A run still climbing at the end fails
it; one that settled (or peaked early, robust overfitting) passes it. Too few
validations on either side give None (unknown), shown as such.

The tolerance is ``tolerance`` points, or ``sigmas`` standard errors of an accuracy
measured on ``examples`` images (sqrt(p(1-p)/n) at the late maximum p) if that is
larger: an "improvement" inside the selection split's sampling noise is no evidence
that a run was still learning (at 95% on 287 images one standard error is 1.3 points).
"""
import math

from utils.errors import UserError

RULES = ("last_third",)


def metric_of(entry):
    """The selection metric of one history entry: robust top-1 if measured, else natural."""
    robust = entry.get("robust_acc1")
    return robust if robust is not None else entry.get("natural_acc1")


def noise_tolerance(p, rule):
    """max(tolerance, sigmas standard errors of accuracy p (%) on ``examples`` images), in points."""
    tol = float(rule.get("tolerance", 1.0))
    n, sigmas = rule.get("examples"), float(rule.get("sigmas", 0))
    if n and sigmas:
        q = min(max(p / 100.0, 0.0), 1.0)
        tol = max(tol, sigmas * 100.0 * math.sqrt(q * (1 - q) / float(n)))
    return tol


def last_third(history, epochs, rule):
    cut = 2.0 * epochs / 3.0
    early = [metric_of(h) for h in history if h.get("epoch", 0) < cut]
    late = [metric_of(h) for h in history if h.get("epoch", 0) >= cut]
    early, late = [v for v in early if v is not None], [v for v in late if v is not None]
    if not early or not late:
        return None
    return max(late) <= max(early) + noise_tolerance(max(late), rule)


def converged(history, epochs, rule=None):
    """True / False / None (unknown) for a run with ``history`` over ``epochs`` epochs.

    ``rule``: the spec's ``convergence`` dict ({rule: last_third, tolerance: points}); None
    means the spec states no rule (None is returned)."""
    if not rule:
        return None
    name = rule.get("rule", "last_third")
    if name not in RULES:
        raise UserError(f"unknown convergence rule '{name}' (valid: {', '.join(RULES)})")
    if not history or not epochs:
        return None
    return last_third(history, int(epochs), rule)


def describe_rule(rule):
    if not rule:
        return "no convergence rule in the spec"
    tol = f"{float(rule.get('tolerance', 1.0)):g} point(s)"
    if rule.get("examples") and rule.get("sigmas"):
        tol = (f"max({tol}, {float(rule['sigmas']):g} standard errors of an accuracy on {rule['examples']} "
               "images: the selection split's sampling noise)")
    return (f"converged = the selection metric (PGD-20 accuracy on the selection split) improved by at most "
            f"{tol} during the last third of the epochs (max over validations at epoch >= 2/3 of the epochs "
            "<= max over earlier validations + that tolerance)")
