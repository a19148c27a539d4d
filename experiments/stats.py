"""Seed statistics: mean, sample standard deviation and a 95% confidence interval.

The interval is Student's t: mean ± t(0.975, n−1)·sd/√n over the n seeds (no
interval from one seed). Paired differences (``paired``) match seeds: seed s of
one point against seed s of another (same data order and attack starts), which
is how the claims compare variants.
"""
import math

# t(0.975, df) for df = 1..30; beyond that the normal quantile is within 2%
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def t975(df):
    return T975[df - 1] if df <= len(T975) else 1.96


def describe(values):
    """{'n', 'mean', 'sd', 'ci95' (half-width), 'low', 'high'} of the numbers in ``values`` (None skipped)."""
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    if not n:
        return {"n": 0, "mean": None, "sd": None, "ci95": None, "low": None, "high": None}
    mean = sum(xs) / n
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "ci95": None, "low": None, "high": None}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci95": half, "low": mean - half, "high": mean + half}


def paired(a, b):
    """``describe`` of a[s] − b[s] over the seeds s both dicts ({seed: value}) have a value for."""
    return describe([a[s] - b[s] for s in sorted(set(a) & set(b)) if a[s] is not None and b[s] is not None])


def fmt(d, digits=1):
    """'mean ± ci95 (n)' of a ``describe`` dict; '–' when there is no value."""
    if not d or d["mean"] is None:
        return "–"
    if d["ci95"] is None:
        return f"{d['mean']:.{digits}f} (n={d['n']})"
    return f"{d['mean']:.{digits}f} ± {d['ci95']:.{digits}f} (n={d['n']})"
