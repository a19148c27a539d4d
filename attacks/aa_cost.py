"""What an AutoAttack run (``attacks.autoattack``) costs, how far it is, and whether it is reduced.

* ``reductions(settings, reference)``: every setting that ran below the reference's own
  (fewer APGD/FAB iterations with ``--aa_steps``, fewer Square queries with
  ``--aa_queries``, fewer EOT passes or restarts): a non-empty list marks the run a
  reduced protocol in every record it reaches (``label`` gives the short tag tables use).
* ``Progress``: one log line per attack of a run (examples in, examples left robust after
  it, its seconds, an estimate of the seconds left in this call). The estimate prices the
  remaining attacks in model passes per example (``passes``) at the seconds per
  example-pass measured so far in the call, for every example still robust: it ignores the
  examples the cascade will drop and Square's early finish on fooled examples, so it errs
  high.
"""
import logging
import time

import torch

log = logging.getLogger("rst")
COMPARED = ("n_iter", "n_queries", "restarts", "eot_iter")  # fewer of any: a weaker attack
# reference object attribute -> the attack names it runs (the reference shares objects)
OBJECTS = {"apgd": ("apgd-ce", "apgd-dlr"), "apgd_targeted": ("apgd-t",), "fab": ("fab", "fab-t"),
           "square": ("square",)}
SQUARE_PASS = 0.5  # a Square query is a forward pass only: about half a forward + backward


def reductions(settings, reference):
    """``['square n_queries 100 (reference 5000)', ...]``: per attack, every setting of
    ``COMPARED`` that is below the reference's (both ``{attack: {setting: value}}``)."""
    out = []
    for name, ran in settings.items():
        for key in COMPARED:
            ref, value = reference.get(name, {}).get(key), ran.get(key)
            if ref is not None and value is not None and value < ref:
                out.append(f"{name} {key} {value} (reference {ref})")
    return out


def label(protocol, name="autoattack"):
    """``name`` for a reference-strength run, ``name (reduced)`` otherwise (tables, plots, logs)."""
    return f"{name} (reduced)" if protocol and protocol.get("reduced") else name


def passes(name, s):
    """Model passes (forward + backward = 1) one example costs in attack ``name`` with settings ``s``."""
    eot, restarts = s.get("eot_iter", 1), s.get("restarts", 1)
    if name in ("apgd-ce", "apgd-dlr"):
        return s["n_iter"] * restarts * eot
    if name == "apgd-t":
        return s["n_iter"] * restarts * eot * s["n_target_classes"]
    if name == "fab":  # a Jacobian per iteration: counted as two passes
        return 2 * s["n_iter"] * restarts
    if name == "fab-t":
        return 2 * s["n_iter"] * s["n_target_classes"]
    if name == "square":
        return SQUARE_PASS * s["n_queries"] * restarts
    return 0.0


class Progress:
    """Progress lines of one AutoAttack call over ``n`` examples, for the record ``ran``
    (``attacks.autoattack.settings_of``): ``done(name, n_in, n_left, seconds)`` after each
    attack, in ``ran["attacks"]`` order."""

    def __init__(self, ran, n, call=0):
        self.order, self.settings, self.n, self.call = list(ran["attacks"]), ran["settings"], n, call
        self.tag = label(ran, f"AutoAttack {ran['version']}")
        self.every_example = bool(ran.get("every_example"))  # rand: each attack runs on every example
        self.next, self.units, self.seconds = 0, 0.0, 0.0

    def done(self, name, n_in, n_left, seconds):
        """Log the line of attack ``name``; returns the estimate of the seconds left."""
        self.next += 1
        self.units += n_in * passes(name, self.settings[name])
        self.seconds += seconds
        rest = self.order[self.next:]
        per_unit = self.seconds / self.units if self.units else 0.0
        n_next = self.n if self.every_example else n_left  # the cascade drops the examples fooled
        left = per_unit * n_next * sum(passes(r, self.settings[r]) for r in rest)
        then = (", ".join(rest) if n_next else "none: no example left") if rest else "done"
        log.info("%s call %d, %s (%d/%d): %d examples in, %d left robust, %.1f s; about %.0f s left in this call "
                 "(next: %s)", self.tag, self.call, name, self.next, len(self.order), n_in, n_left, seconds, left, then)
        return left

    def watch(self, aa):
        """Wrap the ``perturb`` of the reference object ``aa``'s attacks so that each attack the
        cascade runs (on the examples still robust, one batch) logs its line."""
        for attr in OBJECTS:
            obj = getattr(aa, attr)
            obj.perturb = self._timed(obj.perturb, aa.model)

    def _timed(self, perturb, model):
        def run(x, y, *args, **kwargs):
            name = self.order[min(self.next, len(self.order) - 1)]  # one batch per attack: the next in order
            start = time.perf_counter()
            out = perturb(x, y, *args, **kwargs)
            with torch.no_grad():
                left = int((model(out).argmax(1) == y).sum())
            self.done(name, len(y), left, time.perf_counter() - start)
            return out
        return run
