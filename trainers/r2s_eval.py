"""Honest evaluation of an R2S model (``test_trans.py --r2s``): the numbers of r2s.json.

Accuracy of the random model is its expectation over the uniform switch: for each
input, the fraction of members that classify it correctly, computed exactly by running
every member (a draw per batch would add evaluation noise of the order of the gap
between members; per-batch and per-example switching have the same expectation).

Per batch of the evaluation set (``--n_eval`` examples):

* natural accuracy (each member's, and the switch's: their mean);
* transfer from each member j (the paper's setting): ``transfer_paper`` uses the
  paper's PGD-20 with per-example early stop (which also gives member j's own
  white-box robust accuracy), ``transfer_strong`` PGD-20 without early stop keeping
  each example's highest-source-loss iterate (``attacks.pgd.pgd_transfer``). Both are
  deterministic given the seed: they run once (one pass);
* in each of ``--eval_passes`` passes (the adaptive attacks' random starts and switch
  draws differ), every attack of ``adaptive_attacks`` through the switch:
  PGD-20 through the switch, EOT-PGD (exact over members when they are at most
  ``--eot_samples``), PGD on the members' mean softmax, ARC, and with
  ``--eval_attack autoattack`` AutoAttack ``rand`` (see ``attacks.randomized``);
* the worst case per example: the minimum of its expected correctness over natural,
  every transfer source of both protocols and every adaptive attack in every pass
  (the attacker keeps, per example, whatever worked best). ``within_pass`` gives the
  same minimum taken inside each pass, for the spread.

Each result is ``{"mean", "std", "per_pass"}`` (percent; sample std over passes) with
a ``protocol`` dict (attack, steps, step size and epsilon in 0-255 pixel units, early
stop, restarts, EOT samples and whether exact, passes, n_eval, seed).
"""
import functools
import logging
import math
import os

import torch
from tqdm import tqdm

from attacks.pgd import pgd20, pgd_transfer
from attacks.randomized import RANDOMIZED_ATTACKS, expected_correct, member_logits
from models.r2s import STRUCTURE_KEYS, R2S, build_r2s
from utils.config import show_progress

log = logging.getLogger("rst")
STEP = 2 / 255  # [0, 1] units: every PGD-type attack here, and ARC's local step
TRANSFER = {"transfer_paper": pgd20, "transfer_strong": pgd_transfer}
SELECTION = "per example the iterate with the lowest exact expected accuracy, then the highest mean cross-entropy"


def r2s_from_tickets(tickets, info, seed=0):
    """Build the R2S model of ``trainers.transfer.Ticket`` objects (one random network)."""
    config = {k: getattr(tickets[0].config, k) for k in STRUCTURE_KEYS if hasattr(tickets[0].config, k)}
    data_info = {"num_classes": int(tickets[0].config.num_classes or info.num_classes),
                 "in_channels": info.in_channels, "image_size": info.image_size,
                 "mean": list(info.mean) if info.mean is not None else None,
                 "std": list(info.std) if info.std is not None else None}
    return build_r2s([(t.name, t.prune_rate, t.model) for t in tickets], config, data_info, seed)


def adaptive_attacks(cfg, seed=0):
    """name -> ``attack(model, x, y) -> x_adv`` for every attack through the switch (in order)."""
    eps = cfg.epsilon / 255
    settings = {"switch_pgd20": {},
                "eot_pgd": {"step": STEP, "iters": int(cfg.eot_steps), "samples": int(cfg.eot_samples)},
                "ensemble_pgd": {"step": STEP, "iters": int(cfg.eot_steps)},
                "arc": {"step": STEP, "iters": int(cfg.eot_steps)}}
    if cfg.eval_attack == "autoattack":
        settings["autoattack_rand"] = {"seed": int(seed), "steps": int(cfg.aa_steps)}
    return {name: functools.partial(RANDOMIZED_ATTACKS.get(name), epsilon=eps, **kw)
            for name, kw in settings.items()}


def protocol(name, cfg, members, passes, n_eval, seed):
    """What was run for the result ``name`` (epsilon and step sizes in 0-255 pixel units)."""
    steps, exact = int(cfg.eot_steps), members <= int(cfg.eot_samples)
    table = {
        "transfer_paper": dict(attack="PGD-20 on each member (source), scored on the switch", steps=20,
                               step_size=2.0, early_stop=True, eot_samples=None, passes=1,
                               selection="first misclassifying iterate on the source (the paper's protocol)"),
        "transfer_strong": dict(attack="PGD-20 on each member (source), scored on the switch", steps=20,
                                step_size=2.0, early_stop=False, eot_samples=None, passes=1,
                                selection="per example the iterate with the highest source loss"),
        "switch_pgd20": dict(attack="PGD-20 through the random switch (one member drawn per step)", steps=20,
                             step_size=2.0, early_stop=False, eot_samples=1, selection="last iterate"),
        "eot_pgd": dict(attack="EOT-PGD on the expected cross-entropy over the switch", steps=steps,
                        step_size=2.0, early_stop=False, eot_samples=members if exact else int(cfg.eot_samples),
                        eot_exact=exact, selection=SELECTION),
        "ensemble_pgd": dict(attack="PGD on the cross-entropy of the members' mean softmax", steps=steps,
                             step_size=2.0, early_stop=False, eot_samples=members, eot_exact=True,
                             selection=SELECTION),
        "arc": dict(attack="ARC (Dbouk & Shanbhag 2022), L-inf, all members, uniform switch", steps=steps,
                    step_size=2.0, rho=0.05 * cfg.epsilon, early_stop=False, eot_samples=members, eot_exact=True,
                    selection="accepted point (expected accuracy never rises)"),
        "autoattack_rand": dict(attack="AutoAttack rand (torchattacks: APGD-CE, APGD-DLR), each on every example",
                                steps=int(cfg.aa_steps), step_size=None, early_stop=False, eot_samples=20,
                                eot_exact=False, selection="per example the output with the lower expected accuracy"),
    }
    out = dict(table.get(name, {"attack": name}), epsilon=float(cfg.epsilon), restarts=1, n_eval=n_eval,
               seed=int(seed))
    out.setdefault("passes", passes)
    return out


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


def _transfer_batch(views, x, y, eps, tally, worst):
    """Both transfer protocols from every member; updates ``tally``; returns the running worst case."""
    for key, attack in TRANSFER.items():
        for j, view in enumerate(views):
            correct = member_logits(views, attack(view, x, y, eps)).argmax(2) == y
            tally.transfer[key][j] += float(correct.double().mean(0).sum())
            worst = torch.minimum(worst, correct.double().mean(0))
            if key == "transfer_paper":
                tally.member_robust[j] += float(correct[j].sum())
    return worst


def _evaluate_batch(r2s, views, x, y, cfg, attacks, tally, bar=None):
    """One batch: natural, transfer, then every adaptive attack in every pass (into ``tally``);
    ``bar`` (tqdm) shows which attack runs."""
    eps = cfg.epsilon / 255
    clean = member_logits(views, x).argmax(2) == y
    natural = clean.double().mean(0)
    tally.natural += float(natural.sum())
    for j in range(len(views)):
        tally.member_natural[j] += float(clean[j].sum())
    worst = _transfer_batch(views, x, y, eps, tally, natural)
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


def evaluate_r2s(r2s: R2S, loader, device, cfg, seed=0, attacks=None):
    """The r2s.json numbers (accuracies in percent) for ``r2s`` on ``loader``.

    ``attacks``: name -> attack through the switch (default ``adaptive_attacks(cfg, seed)``).
    """
    attacks = adaptive_attacks(cfg, seed) if attacks is None else attacks
    tally = Tally(r2s.num_members, attacks, max(1, int(cfg.eval_passes)))
    r2s.eval().reseed(seed)
    r2s.force_member(None)
    views = [r2s.member(j) for j in range(r2s.num_members)]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        bar = tqdm(loader, desc="R2S", leave=False, disable=not show_progress(cfg))
        for batch, (x, y) in enumerate(bar):
            _evaluate_batch(r2s, views, x.to(device), y.to(device), cfg, attacks, tally, bar)
            log.info("R2S batch %d: %d examples done", batch, tally.n)
    return summarise(r2s, tally, cfg, seed)


def summarise(r2s, tally, cfg, seed):
    """The r2s.json dict (see the module docstring)."""
    def proto(name):
        return protocol(name, cfg, tally.members, tally.passes, tally.n, seed)

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
        "eot_samples": int(cfg.eot_samples), "eot_steps": int(cfg.eot_steps), "eval_passes": tally.passes,
        "eval_attack": cfg.eval_attack, "aa_steps": int(cfg.aa_steps), "epsilon": cfg.epsilon, "set": cfg.set,
        "n_eval": tally.n, "seed": int(seed),
    }


def summary_line(out):
    """One line for the terminal: natural, transfer (both protocols), each adaptive attack, worst case."""
    attacks = out["attacks"]
    parts = [f"R2S natural {out['natural_acc1']['mean']:.2f}",
             f"transfer min paper {attacks['transfer_paper_min']['mean']:.2f}",
             f"strong {attacks['transfer_strong_min']['mean']:.2f}"]
    parts += [f"{k} {v['mean']:.2f}" for k, v in attacks.items() if not k.startswith("transfer")]
    return ", ".join(parts + [f"worst case {out['worst_case']['mean']:.2f}"])


def disk_usage(r2s, path, tickets):
    """Bytes on disk: the packed R2S file against one weight set and the separate ticket files."""
    shared = sum(v.numel() * v.element_size() for k, v in r2s.net.state_dict().items() if k not in r2s.bn_names)
    masked = sum(m.numel() for m in r2s.masks(0).values())
    return {"r2s_file_bytes": os.path.getsize(path), "shared_weight_bytes": shared,
            "mask_bytes_per_member": math.ceil(masked / 8), "masked_weights": masked,
            "ticket_files_bytes": sum(os.path.getsize(t.path) for t in tickets)}
