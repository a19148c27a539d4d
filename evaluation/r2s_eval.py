"""Honest evaluation of an R2S model (``test_trans.py --r2s``): the numbers of r2s.json.

Accuracy of the random model is its expectation over the uniform switch: for each
input, the fraction of members that classify it correctly, computed exactly by running
every member (a draw per batch would add evaluation noise of the order of the gap
between members; per-batch and per-example switching have the same expectation).

On the evaluation set (``--n_eval`` examples):

* natural accuracy (each member's, and the switch's: their mean);
* transfer from each member j (the paper's setting), from the examples of
  ``evaluation.transfer_examples`` (the transfer matrix's own: one PGD-20 trajectory per
  source and batch, random starts seeded once per source): ``transfer_paper`` scores
  the early-stopped iterate (which also gives member j's own white-box robust
  accuracy), ``transfer_strong`` per example the worse (lower expected accuracy) of the
  early-stopped and the highest-source-loss iterates, so strong <= paper. Both are
  deterministic given the seed: they run once (one pass);
* in each of ``--eval_passes`` passes (the adaptive attacks' random starts, switch
  draws and AutoAttack seeds differ), every attack of ``adaptive_attacks`` through the
  switch: PGD-20 through the switch, EOT-PGD (exact over members when they are at most
  ``--eot_samples``), PGD on the members' mean softmax, ARC, and with
  ``--eval_attack autoattack`` the reference AutoAttack ``rand`` on every example
  (``attacks.autoattack.autoattack_rand``);
* the worst case per example: the minimum of its expected correctness over natural,
  every transfer source of both protocols and every adaptive attack in every pass
  (the attacker keeps, per example, whatever worked best). ``within_pass`` gives the
  same minimum taken inside each pass, for the spread.

Each result is ``{"mean", "std", "per_pass"}`` (percent; sample std over passes) with
a ``protocol`` dict (attack, steps, step size and epsilon in 0-255 pixel units, the
early-stop rule applied, restarts, EOT samples and whether exact, passes, n_eval,
seeds). The numbers are read off what ran: the arguments every adaptive attack was
called with (``attacks.recorded.Recorded``), the transfer examples' function, and for
AutoAttack the reference objects; r2s.json's headline protocol takes its AutoAttack and
EOT fields from those per-attack records (``headline``).
"""
import inspect
import logging
import math
import os

import torch
from tqdm import tqdm

from attacks.autoattack import AutoAttackEval
from attacks.aa_cost import label
from attacks.randomized import ARC_RHO, RANDOMIZED_ATTACKS, expected_correct, member_logits
from attacks.recorded import Recorded
from models.r2s import STRUCTURE_KEYS, R2S, build_r2s
from evaluation import transfer_examples
from evaluation.evaluate import eval_step
from utils.config import show_progress

log = logging.getLogger("rst")
TRANSFER = ("transfer_paper", "transfer_strong")
SELECTION = "per example the iterate with the lowest exact expected accuracy, then the highest mean cross-entropy"


def r2s_from_tickets(tickets, info, seed=0):
    """Build the R2S model of ``evaluation.transfer.Ticket`` objects (one random network)."""
    config = {k: getattr(tickets[0].config, k) for k in STRUCTURE_KEYS if hasattr(tickets[0].config, k)}
    data_info = {"num_classes": int(tickets[0].config.num_classes or info.num_classes),
                 "in_channels": info.in_channels, "image_size": info.image_size,
                 "mean": list(info.mean) if info.mean is not None else None,
                 "std": list(info.std) if info.std is not None else None}
    return build_r2s([(t.name, t.prune_rate, t.model) for t in tickets], config, data_info, seed)


def adaptive_attacks(cfg, seed=0):
    """name -> ``attack(model, x, y) -> x_adv`` for every attack through the switch (in order),
    each recording what it ran (``attacks.recorded.Recorded``, AutoAttack's ``protocol()``).
    AutoAttack's call i (batch-major, pass-minor) uses seed ``seed + i``."""
    eps, step = cfg.epsilon / 255, eval_step(cfg)  # every PGD-type attack here, and ARC's local step
    settings = {"switch_pgd20": {"step": step},
                "eot_pgd": {"step": step, "iters": int(cfg.eot_steps), "samples": int(cfg.eot_samples)},
                "ensemble_pgd": {"step": step, "iters": int(cfg.eot_steps)},
                "arc": {"step": step, "iters": int(cfg.eot_steps)}}
    out = {name: Recorded(RANDOMIZED_ATTACKS.get(name), epsilon=eps, **kw) for name, kw in settings.items()}
    if cfg.eval_attack == "autoattack":
        out["autoattack_rand"] = AutoAttackEval(eps, getattr(cfg, "aa_version", "standard"), int(seed),
                                                int(cfg.aa_steps), int(getattr(cfg, "aa_queries", 5000)))
    return out


NONE = "none: every example takes every step"
# what each result is, in words; the numbers (steps, step size, samples) are read off what ran
DESCRIPTIONS = {
    "transfer_paper": dict(attack="PGD-20 on each member (source), scored on the switch", early_stop=True,
                           eot_samples=None, passes=1,
                           early_stop_rule="per example, on the source: stops once the source misclassifies it",
                           selection="first misclassifying iterate on the source (the paper's protocol)"),
    "transfer_strong": dict(attack="PGD-20 on each member (source), scored on the switch", early_stop=False,
                            eot_samples=None, passes=1,
                            early_stop_rule="none for the highest-loss candidate (the paper candidate is the "
                                            "early-stopped one)",
                            selection="per example the worse (lower expected accuracy) of the early-stopped and "
                                      "the highest-source-loss iterates of one trajectory"),
    "switch_pgd20": dict(attack="PGD-20 through the random switch (one member drawn per step)", eot_samples=1,
                         selection="last iterate"),
    "eot_pgd": dict(attack="EOT-PGD on the expected cross-entropy over the switch", early_stop=False,
                    early_stop_rule=NONE, selection=SELECTION),
    "ensemble_pgd": dict(attack="PGD on the cross-entropy of the members' mean softmax", early_stop=False,
                         early_stop_rule=NONE, eot_exact=True, selection=SELECTION),
    "arc": dict(attack="ARC (Dbouk & Shanbhag 2022), L-inf, all members, uniform switch", early_stop=False,
                early_stop_rule="an example every member misclassifies stops (its expected accuracy is 0)",
                eot_exact=True,
                selection="accepted point, compared against its random start (expected accuracy never rises)"),
    "autoattack_rand": dict(attack="AutoAttack rand (reference pyautoattack APGD-CE, APGD-DLR), each on every "
                                   "example", step_size=None, early_stop=False, eot_exact=False),
}


def _in_255(step):
    return None if step is None else round(float(step) * 255, 6)


def transfer_settings(step):
    """Steps (off ``TRANSFER_EXAMPLES``' signature) and step size (1/255) of the transfer examples;
    ``step``: what ``source_correctness`` was called with ([0, 1] units, ``--eval_step``)."""
    params = inspect.signature(TRANSFER_EXAMPLES).parameters
    default = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    return {"steps": default.get("iters"), "step_size": _in_255(step), "restarts": 1}


def measured(name, ran, members):
    """The protocol's numbers for ``name`` from the settings its calls recorded (``ran``)."""
    if name in TRANSFER:
        return transfer_settings((ran or {}).get("step"))
    if not ran:
        return {"steps": None, "step_size": None}
    if "settings" in ran:  # AutoAttack: read back from the reference objects that ran
        apgd = ran["settings"].get("apgd-ce", {})
        return dict(ran, steps=apgd.get("n_iter"), restarts=apgd.get("restarts"), eot_samples=apgd.get("eot_iter"))
    out = {"steps": ran.get("iters"), "step_size": _in_255(ran.get("step")), "restarts": ran.get("restarts", 1)}
    known = ran.get("members")
    if name == "switch_pgd20":  # attacks.pgd.pgd20's rule: no early stop on a randomised model
        out.update(early_stop=not ran.get("randomized"), early_stop_rule=NONE if ran.get("randomized") else
                   "per example: stops once the (drawn) model misclassifies it")
    elif name == "eot_pgd":
        exact = bool(known) and ran.get("samples") is not None and known <= ran["samples"]
        out.update(eot_samples=known if exact else ran.get("samples"), eot_exact=exact)
    elif name in ("ensemble_pgd", "arc"):
        out["eot_samples"] = known
    if name == "arc" and ran.get("epsilon") is not None:
        out["rho"] = _in_255(ARC_RHO * ran["epsilon"])
    return out


def protocol(name, members, passes, n_eval, seed, epsilon, ran=None):
    """What was run for the result ``name`` (epsilon and step sizes in 0-255 pixel units): its
    description and the numbers read off what ran (``measured``)."""
    out = dict(DESCRIPTIONS.get(name, {"attack": name}), epsilon=float(epsilon), restarts=1, n_eval=n_eval,
               seed=int(seed))
    out.setdefault("passes", passes)
    out.update(measured(name, ran, members))
    return out


def headline(attacks):
    """Fields of r2s.json's headline ``eval_protocol`` read from the per-attack protocols
    (``attacks``: name -> result with its "protocol"), so the two always agree."""
    def field(name, key):
        return attacks.get(name, {}).get("protocol", {}).get(key)
    aa = attacks.get("autoattack_rand", {}).get("protocol", {})
    return {"aa_steps": field("autoattack_rand", "steps"), "aa_version": aa.get("requested_version"),
            "aa_queries": (aa.get("settings", {}).get("square") or {}).get("n_queries"),
            "aa_reduced": aa.get("reduced"),
            "eot_steps": field("eot_pgd", "steps"), "eot_samples": field("eot_pgd", "eot_samples"),
            "eot_exact": field("eot_pgd", "eot_exact")}


def spread(values):
    """Mean, sample standard deviation (0 for one pass) and the per-pass values (percent)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "per_pass": list(values)}


class Tally:
    """Sums over examples of per-example expected correctness, per result and pass."""

    def __init__(self, members, attacks, passes):
        self.n, self.members, self.attacks, self.passes = 0, members, list(attacks), passes
        self.member_natural, self.member_robust = [0.0] * members, [0.0] * members
        self.natural, self.worst = 0.0, 0.0
        self.transfer = {k: [0.0] * members for k in TRANSFER}
        self.adaptive = {k: [0.0] * passes for k in self.attacks}
        self.within = [0.0] * passes

    def pct(self, total):
        return 100.0 * total / max(1, self.n)


def transfer_worst(transfer, tally):
    """Both transfer protocols from every member, from per-example correctness ``transfer[j]``
    ({candidate: bool [members, examples]}, see ``evaluation.transfer_examples``), into
    ``tally``; returns per example the minimum expected correctness over sources and protocols."""
    worst = None
    for j, correct in enumerate(transfer):
        paper = correct["paper"].double().mean(0)
        strong = torch.minimum(paper, correct["highest_loss"].double().mean(0))
        tally.transfer["transfer_paper"][j] += float(paper.sum())
        tally.transfer["transfer_strong"][j] += float(strong.sum())
        tally.member_robust[j] += float(correct["paper"][j].double().sum())
        worst = strong if worst is None else torch.minimum(worst, strong)
    return worst


def _evaluate_batch(r2s, views, x, y, transfer_ok, attacks, tally, bar=None):
    """One batch: natural, then every adaptive attack in every pass (into ``tally``);
    ``transfer_ok``: the batch's per-example minimum over transfer; ``bar`` (tqdm) shows
    which attack runs."""
    clean = member_logits(views, x).argmax(2) == y
    natural = clean.double().mean(0)
    tally.natural += float(natural.sum())
    for j in range(len(views)):
        tally.member_natural[j] += float(clean[j].sum())
    worst = torch.minimum(natural, transfer_ok.to(natural.device))
    overall = worst.clone()
    for p in range(tally.passes):
        within = worst.clone()
        for name, attack in attacks.items():
            if bar is not None:
                bar.set_postfix_str(f"pass {p + 1}/{tally.passes} {name}")
            ok = expected_correct(r2s, attack(r2s, x, y), y)
            tally.adaptive[name][p] += float(ok.sum())
            within = torch.minimum(within, ok)
        tally.within[p] += float(within.sum())
        overall = torch.minimum(overall, within)
    tally.worst += float(overall.sum())
    tally.n += len(y)


def member_transfer(views, loader, device, cfg, seed):
    """Per-example transfer correctness from every member on every member (the transfer
    matrix's computation, ``evaluation.transfer_examples.source_correctness``)."""
    return [transfer_examples.source_correctness(v, views, loader, device, cfg.epsilon / 255, seed,
                                                 examples=TRANSFER_EXAMPLES, step=eval_step(cfg)) for v in views]


TRANSFER_EXAMPLES = transfer_examples.paper_and_strong  # (source, x, y, eps, step=) -> (paper, highest-loss)


def evaluate_r2s(r2s: R2S, loader, device, cfg, seed=0, attacks=None, transfer=None):
    """The r2s.json numbers (accuracies in percent) for ``r2s`` on ``loader``.

    ``attacks``: name -> attack through the switch (default ``adaptive_attacks(cfg, seed)``).
    ``transfer``: per member the per-example transfer correctness the transfer matrix
    computed (``evaluation.transfer_examples.source_correctness`` on the same loader);
    computed here the same way when not given.
    """
    attacks = adaptive_attacks(cfg, seed) if attacks is None else attacks
    tally = Tally(r2s.num_members, attacks, max(1, int(cfg.eval_passes)))
    r2s.eval().reseed(seed)
    r2s.force_member(None)
    views = [r2s.member(j) for j in range(r2s.num_members)]
    transfer = member_transfer(views, loader, device, cfg, seed) if transfer is None else transfer
    transfer_ok = transfer_worst(transfer, tally)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        bar = tqdm(loader, desc="R2S", leave=False, disable=not show_progress(cfg))
        for batch, (x, y) in enumerate(bar):
            at = slice(tally.n, tally.n + len(y))
            _evaluate_batch(r2s, views, x.to(device), y.to(device), transfer_ok[at], attacks, tally, bar)
            log.info("R2S batch %d: %d examples done", batch, tally.n)
    if transfer_ok.numel() != tally.n:
        raise ValueError(f"transfer correctness covers {transfer_ok.numel()} examples, the loader {tally.n}")
    return summarise(r2s, tally, cfg, seed, attacks)


def summarise(r2s, tally, cfg, seed, attacks=None):
    """The r2s.json dict (see the module docstring)."""
    def proto(name):
        ran = getattr((attacks or {}).get(name), "protocol", None)
        if name in TRANSFER:  # the step the transfer examples were made with (matrix or member_transfer)
            ran = (lambda: {"step": eval_step(cfg)})
        return protocol(name, tally.members, tally.passes, tally.n, seed, cfg.epsilon, ran() if ran else None)

    results = {}
    for key in TRANSFER:
        per_member = [tally.pct(c) for c in tally.transfer[key]]
        results[key] = {name: spread([v]) for name, v in zip(r2s.names, per_member)}
        results[key]["protocol"] = proto(key)
        results[f"{key}_min"] = dict(spread([min(per_member)]), protocol=dict(proto(key), reduction="min over sources"))
    for name in tally.attacks:
        results[name] = dict(spread([tally.pct(c) for c in tally.adaptive[name]]),
                             protocol=proto(name))
    return {
        "members": [{"file": name, "prune_rate": k, "natural_acc1": tally.pct(tally.member_natural[j]),
                     "robust_acc1": tally.pct(tally.member_robust[j])}
                    for j, (name, k) in enumerate(zip(r2s.names, r2s.prune_rates))],
        "switching": "per forward pass (one member drawn per batch)",
        "accuracy": "expected over the uniform switch (every member evaluated), percent",
        "natural_acc1": spread([tally.pct(tally.natural)]),
        "attacks": results,
        "worst_case": {"mean": tally.pct(tally.worst),
                       "within_pass": spread([tally.pct(c) for c in tally.within]),
                       "protocol": ["natural", *TRANSFER, *tally.attacks],
                       "reduction": "per example, min over attacks, transfer sources and passes"},
        "eval_passes": tally.passes, "eval_attack": cfg.eval_attack, **headline(results),
        "epsilon": cfg.epsilon, "set": cfg.set,
        "n_eval": tally.n, "seed": int(seed),
    }


def summary_line(out):
    """One line for the terminal: natural, transfer (both protocols), each adaptive attack, worst case."""
    attacks = out["attacks"]
    parts = [f"R2S natural {out['natural_acc1']['mean']:.2f}",
             f"transfer min paper {attacks['transfer_paper_min']['mean']:.2f}",
             f"strong {attacks['transfer_strong_min']['mean']:.2f}"]
    parts += [f"{label(v['protocol'], k)} {v['mean']:.2f}" for k, v in attacks.items() if not k.startswith("transfer")]
    return ", ".join(parts + [f"worst case {out['worst_case']['mean']:.2f}"])


def disk_usage(r2s, path, tickets):
    """Bytes on disk: the packed R2S file against one weight set and the separate ticket files."""
    shared = sum(v.numel() * v.element_size() for k, v in r2s.net.state_dict().items() if k not in r2s.bn_names)
    masked = sum(m.numel() for m in r2s.masks(0).values())
    return {"r2s_file_bytes": os.path.getsize(path), "shared_weight_bytes": shared,
            "mask_bytes_per_member": math.ceil(masked / 8), "masked_weights": masked,
            "ticket_files_bytes": sum(os.path.getsize(p) for p in {t.path for t in tickets})}  # a bundle once
