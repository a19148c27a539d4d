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
import csv
import math
import sys

from utils.errors import UserError

RULES = ("last_third",)
TARGET = 0.9    # share of a figure's runs that must meet the rule (the digits profile's promise)


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


def _flag(value):
    """A per-seed row's ``converged``: a bool in memory, its text in a CSV; None when unknown."""
    if value in (None, ""):
        return None
    return value if isinstance(value, bool) else str(value) == "True"


def share(rows):
    """Distinct runs (per-seed rows keyed by run folder) with a known flag, and how many converged.

    Rows of several figures may name one run (shared runs): it counts once."""
    runs = {}
    for r in rows:
        flag = _flag(r.get("converged"))
        if r.get("row") == "seed" and flag is not None:
            seed = r.get("seed")
            label = f"{r.get('id')}/seed={seed}" if seed not in (None, "") else str(r.get("id"))
            runs[r.get("run_dir") or label] = (flag, label)
    done = sum(flag for flag, _ in runs.values())
    return {"runs": len(runs), "converged": done, "share": done / len(runs) if runs else None,
            "target": TARGET, "unconverged": sorted(i for flag, i in runs.values() if not flag)}


def describe_share(s):
    if not s["runs"]:
        return "Convergence: no run has a convergence flag"
    met = "met" if s["share"] >= s["target"] else "NOT met"
    text = (f"Convergence: {s['converged']} of {s['runs']} runs ({100 * s['share']:.0f}%) meet the rule "
            f"(target {100 * s['target']:.0f}%: {met})")
    return text + (f"; not converged: {', '.join(s['unconverged'])}" if s["unconverged"] else "")


def main(paths):
    """``python -m experiments.convergence CSV...``: the share over the distinct runs of these CSVs."""
    rows = []
    for path in paths:
        with open(path, newline="") as fh:
            rows += list(csv.DictReader(fh))
    print(describe_share(share(rows)))


if __name__ == "__main__":
    main(sys.argv[1:])
