"""Honest evaluation of an R2S model (``test_trans.py --r2s``).

Per batch of the evaluation set (``--n_eval`` examples):

* each member ticket's PGD-20 examples are generated once (they do not depend on
  the switch) and also give that ticket's own natural and white-box accuracy;
* then, in each of ``--eval_passes`` passes (the attacks through the switch are
  random, so we report the mean and spread over passes), the R2S model is evaluated
  on: natural inputs; (1) PGD-20 transferred from each member (the paper's
  setting); (2) PGD-20 through the random switch (each step's gradient is that of
  whichever member is drawn, the paper's "adaptive" setting); (3) EOT-PGD:
  ``--eot_steps`` steps of 2/255, each averaging the input gradient over
  ``--eot_samples`` draws of the switch; (4) the worst case per example over all of
  the above (the attacker picks the best attack for each example).

Accuracy of the random model is its expectation over the switch: for each input,
the fraction of members that classify it correctly (the switch is uniform). It is
computed exactly, by running every member, instead of sampling one draw per batch,
which would add evaluation noise of the order of the gap between members (and is
the same expectation, so per-batch and per-example switching give equal numbers).
The worst case per example is the minimum of that probability over the attacks.

EOT-PGD moves every example at every step (no early stop: with a random model, one
draw being fooled says little about the next draw) and returns, per example, the
iterate that was strongest by its own estimate: the highest fraction of the step's
draws misclassified, ties broken by the mean cross-entropy. (Returning the last
iterate instead can be weaker than single-draw PGD-20, whose early stop keeps the
first success, since sign steps of 2/255 oscillate inside a small ball.) Each
evaluation of an adversarial input draws a fresh member.
"""
import logging
import math
import os

import torch
import torch.nn.functional as F

from models.r2s import STRUCTURE_KEYS, R2S, build_r2s
from attacks.pgd import input_grad_only, pgd20, random_start, sign_step

log = logging.getLogger("rst")
EOT_STEP = 2 / 255  # [0, 1] units, as PGD-20


def r2s_from_tickets(tickets, info, seed=0):
    """Build the R2S model of ``trainers.transfer.Ticket`` objects (one random network)."""
    config = {k: getattr(tickets[0].config, k) for k in STRUCTURE_KEYS if hasattr(tickets[0].config, k)}
    data_info = {"num_classes": int(tickets[0].config.num_classes or info.num_classes),
                 "in_channels": info.in_channels, "image_size": info.image_size,
                 "mean": list(info.mean) if info.mean is not None else None,
                 "std": list(info.std) if info.std is not None else None}
    return build_r2s([(t.name, t.prune_rate, t.model) for t in tickets], config, data_info, seed)


def eot_estimate(model, x, delta, y, samples):
    """Input gradient of the cross-entropy averaged over ``samples`` draws, and per example
    the fraction of those draws misclassified and their mean cross-entropy."""
    grad, wrong, loss = torch.zeros_like(delta), torch.zeros(len(y), device=x.device), 0.0
    with input_grad_only(model), torch.enable_grad():
        for _ in range(samples):
            d = delta.detach().requires_grad_(True)
            logits = model(x + d)
            per_example = F.cross_entropy(logits.float(), y, reduction="none")
            grad += torch.autograd.grad(per_example.mean(), d)[0]
            wrong += (logits.detach().argmax(1) != y).float()
            loss = loss + per_example.detach()
    return grad / samples, wrong / samples, loss / samples


def eot_pgd(model, x, y, epsilon, step, iters, samples):
    """EOT-PGD: ``iters`` signed steps on the draw-averaged gradient; per example the
    strongest iterate (see module docstring). Radii in [0, 1] units."""
    delta = random_start(x, epsilon)
    best = delta.clone()
    best_wrong = torch.full((len(y),), -1.0, device=x.device)
    best_loss = torch.full((len(y),), -float("inf"), device=x.device)
    shape = (-1,) + (1,) * (x.dim() - 1)
    for i in range(iters + 1):
        grad, wrong, loss = eot_estimate(model, x, delta, y, samples)
        better = (wrong > best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
        best = torch.where(better.view(shape), delta, best)
        best_wrong, best_loss = torch.where(better, wrong, best_wrong), torch.where(better, loss, best_loss)
        if i < iters:
            delta = sign_step(x, delta, grad, step, epsilon)
    return (x + best).detach()


def correct(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) == y


def expected_correct(r2s, x, y):
    """Per example, the probability (over the uniform switch) of a correct prediction."""
    return torch.stack([correct(r2s.member(j), x, y).float() for j in range(r2s.num_members)]).mean(0)


def one_pass(r2s, x, y, transfer_examples, cfg):
    """Per-example probability of a correct prediction of the switched model under every attack."""
    eps = cfg.epsilon / 255
    ok = {"natural": expected_correct(r2s, x, y),
          "transfer": [expected_correct(r2s, x_adv, y) for x_adv in transfer_examples],
          "switch_pgd20": expected_correct(r2s, pgd20(r2s, x, y, eps), y),
          "eot_pgd": expected_correct(r2s, eot_pgd(r2s, x, y, eps, EOT_STEP, cfg.eot_steps, cfg.eot_samples),
                                      y)}
    ok["worst_case"] = torch.stack([ok["natural"], ok["switch_pgd20"], ok["eot_pgd"], *ok["transfer"]]).amin(0)
    return ok


def spread(values):
    """Mean, sample standard deviation (0 for one pass) and the per-pass values (percent)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "passes": list(values)}


class Counts:
    """Sums of per-example correctness (probabilities for the switched model), per pass and member."""

    def __init__(self, passes, members):
        self.n = 0
        self.member_natural, self.member_robust = [0] * members, [0] * members
        self.passes = [{"natural": 0.0, "switch_pgd20": 0.0, "eot_pgd": 0.0, "worst_case": 0.0,
                        "transfer": [0.0] * members} for _ in range(passes)]

    def add(self, p, ok):
        for key in ("natural", "switch_pgd20", "eot_pgd", "worst_case"):
            self.passes[p][key] += float(ok[key].sum())
        for j, t in enumerate(ok["transfer"]):
            self.passes[p]["transfer"][j] += float(t.sum())

    def pct(self, count):
        return 100.0 * count / max(1, self.n)


def evaluate_r2s(r2s: R2S, loader, device, cfg, seed=0):
    """The r2s.json numbers (accuracies in percent) for ``r2s`` on ``loader``."""
    passes, members, eps = max(1, int(cfg.eval_passes)), r2s.num_members, cfg.epsilon / 255
    counts = Counts(passes, members)
    r2s.eval().reseed(seed)
    r2s.force_member(None)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for batch, (x, y) in enumerate(loader):
            x, y = x.to(device), y.to(device)
            views = [r2s.member(j) for j in range(members)]
            transfer = [pgd20(v, x, y, eps) for v in views]
            for j, v in enumerate(views):
                counts.member_natural[j] += int(correct(v, x, y).sum())
                counts.member_robust[j] += int(correct(v, transfer[j], y).sum())
            for p in range(passes):
                counts.add(p, one_pass(r2s, x, y, transfer, cfg))
            counts.n += len(y)
            log.info("R2S batch %d: %d examples done", batch, counts.n)
    return summarise(r2s, counts, cfg, seed)


def summarise(r2s, counts, cfg, seed):
    per_pass = counts.passes
    transfer = {name: spread([counts.pct(p["transfer"][j]) for p in per_pass])
                for j, name in enumerate(r2s.names)}
    return {
        "members": [{"file": name, "prune_rate": k, "natural_acc1": counts.pct(counts.member_natural[j]),
                     "robust_acc1": counts.pct(counts.member_robust[j])}
                    for j, (name, k) in enumerate(zip(r2s.names, r2s.prune_rates))],
        "switching": "per forward pass (one member drawn per batch)",
        "accuracy": "expected over the uniform switch (every member evaluated), percent",
        "natural_acc1": spread([counts.pct(p["natural"]) for p in per_pass]),
        "transfer_pgd20": transfer,
        "transfer_pgd20_min": spread([min(counts.pct(c) for c in p["transfer"]) for p in per_pass]),
        "switch_pgd20": spread([counts.pct(p["switch_pgd20"]) for p in per_pass]),
        "eot_pgd": spread([counts.pct(p["eot_pgd"]) for p in per_pass]),
        "worst_case": spread([counts.pct(p["worst_case"]) for p in per_pass]),
        "eot_samples": int(cfg.eot_samples), "eot_steps": int(cfg.eot_steps), "eval_passes": len(per_pass),
        "epsilon": cfg.epsilon, "set": cfg.set, "n_eval": counts.n, "seed": int(seed),
    }


def disk_usage(r2s, path, tickets):
    """Bytes on disk: the packed R2S file against one weight set and the separate ticket files."""
    shared = sum(v.numel() * v.element_size() for k, v in r2s.net.state_dict().items() if k not in r2s.bn_names)
    masked = sum(m.numel() for m in r2s.masks(0).values())
    return {"r2s_file_bytes": os.path.getsize(path), "shared_weight_bytes": shared,
            "mask_bytes_per_member": math.ceil(masked / 8), "masked_weights": masked,
            "ticket_files_bytes": sum(os.path.getsize(t.path) for t in tickets)}
