"""AutoAttack (Croce & Hein, 2020) through the reference implementation, ``pyautoattack``
(the package RobustBench depends on), L-inf, in [0, 1] pixel space.

Versions (``--aa_version``), each with the reference's own settings (read back from the
reference's objects into the protocol, see ``settings_of``):

* ``standard`` (default): APGD-CE, APGD-T (9 target classes), FAB-T (9), Square (5000
  queries), 100 iterations, one restart each, run as the reference's cascade
  (``run_standard_evaluation``: each attack sees the examples still classified correctly);
* ``plus``: APGD-CE and FAB with 5 restarts, APGD-DLR, Square, APGD-T, FAB-T;
* ``rand``: APGD-CE and APGD-DLR, one restart, EOT over 20 forward passes per gradient.

A randomised model (``attacks.pgd.is_randomized``: R2S, ``SampleSubnetConv``) always gets
``rand`` (the reference's advice for randomised defences), run differently from the
reference's cascade, which attacks only the examples one random forward pass classifies
correctly and returns the clean image for the rest: here APGD-CE and APGD-DLR each run
the reference's APGD iteration (``APGDAttack.attack_single_run``, its step-size rule and
EOT) on EVERY example, and per example the iterate (random start included) with the
lowest expected correctness is returned, ties broken by the higher mean cross-entropy.
Expected correctness is exact over the members when the model has a finite member set
(R2S), else the fraction of the iterate's own ``eot_iter`` forward passes that are
correct. The clean image is never returned.

Only the reference's iteration count (``--aa_steps``, default 100 = the reference's) and
Square's queries (``--aa_queries``, default 5000 = the reference's) can be changed, for
quick checks: every record then lists the settings below the reference's under
``reduced`` (``attacks.aa_cost``), and tables tag the number "(reduced)". Each attack
logs a progress line (examples left robust, an estimate of the seconds left). APGD-T/FAB-T target at most ``classes - 1`` classes (the
reference would index past the logits with fewer than 10 classes; recorded when so).
Every run is in fp32 (autocast off), parameters out of autograd (FAB calls
``backward()``), and the caller's RNG state is kept (the reference seeds torch's global
RNG). The functions are ``(model, x, y, epsilon, ...) -> x_adv``; ``AutoAttackEval`` is
the callable ``--eval_attack autoattack`` builds, which records what ran.
"""
import contextlib
import time

import torch
import torch.nn.functional as F

from attacks.aa_cost import Progress, reductions
from attacks.pgd import input_grad_only, is_randomized, project
from attacks.randomized import members

IMPLEMENTATION = "pyautoattack"
VERSIONS = ("standard", "plus", "rand")
APGD_LOSS = {"apgd-ce": "ce", "apgd-dlr": "dlr"}  # the rand version's two attacks
CASCADE = "the reference's cascade: each attack runs on the examples the previous ones left correct"
EVERY_EXAMPLE = "none: each attack runs on every example (randomised model)"


def reference_version():
    import pyautoattack
    return f"{IMPLEMENTATION} {pyautoattack.__version__}"


def _set_iterations(attack, n):
    """``n`` iterations on a reference APGD/FAB object, with APGD's checkpoints recomputed
    as its constructor computes them from n_iter."""
    attack.n_iter = int(n)
    if hasattr(attack, "n_iter_2"):
        attack.n_iter_orig = int(n)
        attack.n_iter_2, attack.n_iter_min = max(int(0.22 * n), 1), max(int(0.06 * n), 1)
        attack.size_decr = max(int(0.03 * n), 1)


def build_reference(model, epsilon, version="standard", seed=0, device="cpu", n_classes=10, steps=None,
                    n_queries=None):
    """The reference ``AutoAttack`` object (``epsilon`` in [0, 1] units); ``steps`` and
    ``n_queries`` override the reference's 100 iterations / 5000 Square queries (tests)."""
    from pyautoattack import AutoAttack

    aa = AutoAttack(model, eps=float(epsilon), norm="Linf", version=version, seed=int(seed), device=device)
    aa.verbose = False
    if steps is not None:
        for attack in (aa.apgd, aa.apgd_targeted, aa.fab):
            _set_iterations(attack, steps)
    if n_queries is not None:
        aa.square.n_queries = int(n_queries)
    for attack in (aa.apgd_targeted, aa.fab):
        attack.n_target_classes = max(1, min(attack.n_target_classes, n_classes - 1))
    return aa


def settings_of(aa):
    """What the reference object ``aa`` runs, read off its attributes (radius in 1/255 units);
    ``reduced``: the settings below those of the reference's own object of that version."""
    from pyautoattack import AutoAttack

    per = _per_attack(aa)
    reference = _per_attack(AutoAttack(torch.nn.Identity(), eps=aa.epsilon, norm="Linf", version=aa.version))
    return {"implementation": reference_version(), "version": aa.version, "attacks": list(aa.attacks_to_run),
            "settings": per, "seed": aa.seed, "epsilon": round(aa.epsilon * 255, 6), "fp32": True,
            "reduced": reductions(per, reference)}


def _per_attack(aa):
    """{attack: its settings} of the reference object ``aa``."""
    per = {}
    for name in aa.attacks_to_run:
        if name in APGD_LOSS:
            per[name] = {"n_iter": aa.apgd.n_iter, "restarts": aa.apgd.n_restarts, "eot_iter": aa.apgd.eot_iter,
                         "rho": aa.apgd.thr_decr}
        elif name == "apgd-t":
            t = aa.apgd_targeted
            per[name] = {"n_iter": t.n_iter, "restarts": t.n_restarts, "eot_iter": t.eot_iter,
                         "n_target_classes": t.n_target_classes}
        elif name in ("fab", "fab-t"):  # the reference sets FAB-T to 1 restart when it runs it
            per[name] = {"n_iter": aa.fab.n_iter, "restarts": 1 if name == "fab-t" else aa.fab.n_restarts}
            if name == "fab-t":
                per[name]["n_target_classes"] = aa.fab.n_target_classes
        elif name == "square":
            per[name] = {"n_queries": aa.square.n_queries, "restarts": aa.square.n_restarts,
                         "p_init": aa.square.p_init}
    return per


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
    # the reference keeps its output in the ball; this only removes float round-off.
    return (x + project(x, x_adv.to(x.dtype) - x, epsilon)).detach()


def _add(record, ran):
    """Append ``ran`` to ``record`` (when given); the 1-based number of the call, for progress lines."""
    if record is None:
        return 1
    record.append(ran)
    return len(record)


def autoattack(model, x, y, epsilon, version="standard", seed=0, steps=None, n_queries=None, record=None):
    """AutoAttack adversarial examples for ``(x, y)``, inside the eps-ball and [0, 1].

    A randomised model gets ``autoattack_rand`` whatever ``version`` says. ``record``:
    a list the settings that ran are appended to (with the requested version).
    """
    if x.shape[0] == 0:
        return x
    if is_randomized(model):
        return autoattack_rand(model, x, y, epsilon, seed=seed, steps=steps, record=record,
                               requested=version)
    with _isolated(model, x):
        xf = x.float()
        aa = build_reference(model, epsilon, version, seed, x.device, num_classes(model, xf), steps, n_queries)
        ran = dict(settings_of(aa), requested_version=version, every_example=False, early_stop_rule=CASCADE)
        Progress(ran, len(y), _add(record, ran)).watch(aa)
        x_adv, _ = aa.run_standard_evaluation(xf, y, batch_size=len(y))
    return _in_ball(x, x_adv, epsilon)


class _Tracker(torch.nn.Module):
    """The randomised model as the reference APGD sees it: every forward pass goes through;
    each group of ``eot_iter`` passes at one iterate is scored, and per example the iterate
    with the lowest expected correctness (then the highest mean cross-entropy) is kept."""

    def __init__(self, model, x, y):
        super().__init__()
        self.model, self.views, self.y, self.eot_iter = model, members(model), y, 1
        self.calls, self.correct, self.ce = 0, 0.0, 0.0
        self.scored = set()  # how many members each scored iterate was evaluated on
        self.best = x.clone()
        self.ok = torch.full((len(y),), float("inf"), dtype=torch.float64, device=y.device)
        self.loss = torch.full((len(y),), -float("inf"), device=y.device)

    def forward(self, x):
        logits = self.model(x)
        if x.shape[0] == len(self.y):  # the iterates of attack_single_run (whole batch)
            self._score(x.detach(), logits.detach().float())
        return logits

    def _score(self, x, logits):
        first, last = self.calls % self.eot_iter == 0, self.calls % self.eot_iter == self.eot_iter - 1
        self.calls += 1
        if self.views:  # exact over the members, once per iterate
            if first:
                with torch.no_grad():
                    stacked = torch.stack([v(x).float() for v in self.views])
                self.scored.add(len(stacked))
                ce = torch.stack([F.cross_entropy(s, self.y, reduction="none") for s in stacked]).mean(0)
                self._update(x, (stacked.argmax(2) == self.y).double().mean(0), ce)
            return
        self.correct = self.correct + (logits.argmax(1) == self.y).double()
        self.ce = self.ce + F.cross_entropy(logits, self.y, reduction="none")
        if last:
            self._update(x, self.correct / self.eot_iter, self.ce / self.eot_iter)
            self.correct, self.ce = 0.0, 0.0

    def expectation(self):
        """How the expected correctness was computed, from the member counts actually scored."""
        if not self.views:
            return f"mean over the iterate's {self.eot_iter} EOT passes"
        if self.scored == {len(self.views)}:
            return "exact over members"
        return f"mean over {min(self.scored, default=0)} of {len(self.views)} members (not exact)"

    def _update(self, x, ok, loss):
        better = (ok < self.ok) | ((ok == self.ok) & (loss > self.loss))
        self.best[better], self.ok[better], self.loss[better] = x[better], ok[better], loss[better]


def autoattack_rand(model, x, y, epsilon, seed=0, steps=None, eot_iter=None, record=None, requested="rand"):
    """AutoAttack ``rand`` (the reference's APGD-CE and APGD-DLR with EOT) on EVERY example of a
    randomised model; per example the strongest iterate (module docstring). ``eot_iter``
    overrides the reference's 20 passes (tests only)."""
    if x.shape[0] == 0:
        return x
    with _isolated(model, x):
        xf = x.float()
        tracker = _Tracker(model, xf, y)
        aa = build_reference(tracker, epsilon, "rand", seed, x.device, num_classes(model, xf), steps)
        if eot_iter is not None:
            aa.apgd.eot_iter = int(eot_iter)
        tracker.eot_iter = aa.apgd.eot_iter
        ran = dict(settings_of(aa), requested_version=requested, every_example=True, early_stop_rule=EVERY_EXAMPLE,
                   selection="per example the iterate with the lowest expected correctness, then the highest "
                             "mean cross-entropy")
        progress = Progress(ran, len(y), _add(record, ran))
        aa.apgd.init_hyperparam(xf)
        for name in aa.attacks_to_run:
            start = time.perf_counter()
            aa.apgd.loss = APGD_LOSS[name]
            torch.manual_seed(aa.get_seed())  # as the reference's APGDAttack.perturb, per attack
            for _ in range(aa.apgd.n_restarts):
                tracker.calls = 0
                aa.apgd.attack_single_run(xf, y)
            progress.done(name, len(y), int((tracker.ok > 0).sum()), time.perf_counter() - start)
        ran["expectation"] = tracker.expectation()  # what the scoring did, counted while it ran
    return _in_ball(x, tracker.best, epsilon)


class AutoAttackEval:
    """``--eval_attack autoattack``: ``(model, x, y) -> x_adv`` with radius ``epsilon`` ([0, 1]
    units). Call i uses seed ``seed + i`` (batches and R2S passes get different random
    starts); ``runs`` holds the settings read back from every reference object that ran."""

    def __init__(self, epsilon, version="standard", seed=0, steps=None, n_queries=None):
        self.epsilon, self.version, self.seed, self.steps, self.n_queries = epsilon, version, seed, steps, n_queries
        self.runs = []

    def __call__(self, model, x, y):
        seed = self.seed + len(self.runs)
        return autoattack(model, x, y, self.epsilon, self.version, seed, self.steps, self.n_queries, self.runs)

    def protocol(self):
        """The settings that ran (the first run's; every run's seed), or {} before any run."""
        if not self.runs:
            return {}
        out = {k: v for k, v in self.runs[0].items() if k != "seed"}
        out["seeds"] = [r["seed"] for r in self.runs]
        if any(r["settings"] != self.runs[0]["settings"] for r in self.runs):
            out["settings_per_run"] = [r["settings"] for r in self.runs]
        return out


def autoattack_from_config(cfg, seed=None):
    """The evaluation attack for ``--eval_attack autoattack`` (eps = --epsilon/255)."""
    return AutoAttackEval(cfg.epsilon / 255, getattr(cfg, "aa_version", "standard"),
                          int(cfg.seed or 0) if seed is None else int(seed), *_budget(cfg))


def _budget(cfg):
    """(APGD/FAB iterations, Square queries) from --aa_steps and --aa_queries (the reference's 100, 5000)."""
    return int(getattr(cfg, "aa_steps", 100)), int(getattr(cfg, "aa_queries", 5000))


def configured_settings(cfg, randomized=False):
    """The settings a reference AutoAttack built from ``cfg`` runs (the rand version on a
    ``randomized`` model), read off the reference's objects built around a placeholder
    model: the protocol of results written without an AutoAttack run at hand."""
    requested = getattr(cfg, "aa_version", "standard")
    aa = build_reference(torch.nn.Identity(), cfg.epsilon / 255, "rand" if randomized else requested,
                         int(cfg.seed or 0), steps=_budget(cfg)[0], n_queries=_budget(cfg)[1])
    return dict(settings_of(aa), requested_version=requested, early_stop_rule=EVERY_EXAMPLE if randomized else CASCADE)
