"""Transferability between tickets (test_trans.py): loading a folder of tickets,
the source x target robust-accuracy matrix under PGD-20 transfer, and its files.

A ticket folder holds checkpoints named ``<net>_<k>.pth`` (the original's layout)
or written by main.py (which store ``prune_rate``, k = fraction kept, and the config).
k comes from the checkpoint's metadata, else from the file name; a file with
neither is skipped with a warning. The model structure (arch, width, layer types)
comes from the checkpoint's stored config when present, else from the command line.

PGD-20 examples are generated once per source ticket on the evaluation set
(``--n_eval`` examples, batch by batch, with the random starts seeded by ``--seed``)
and every target is evaluated on them; the diagonal is each ticket's white-box
PGD-20 accuracy. Every ticket's own robust accuracy (``--eval_attack``: PGD-20, or
AutoAttack) is always measured, since robust_vs_k.png needs it; with PGD-20 the
rows that ``--all_sources`` adds over the default (the source row) cost only
forward passes.
"""
import argparse
import csv
import logging
import os
import re
from dataclasses import dataclass

import torch

from data import build_dataset, make_loader, subset
from models import build_model, masked_layers
from models.r2s import STRUCTURE_KEYS
from trainers import r2s_eval
from trainers.evaluate import EVAL_ATTACKS, evaluate
from utils.checkpoint import atomic_save, check_arch, extract_state_dict, load_checkpoint, load_model_state
from utils.distributed import DistContext, select_device
from utils.errors import UserError
from utils.run_dir import Run, setup_logging
from utils.seed import seed_all

log = logging.getLogger("rst")
CHECKPOINT_EXTENSIONS = (".pth", ".pt", ".state")
# '<net>_<k>.pth': k is the number after the last underscore of the stem (0.01, 5e-2, 1)
K_IN_NAME = re.compile(r"_((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$")


@dataclass
class Ticket:
    path: str
    name: str           # file name, the ticket's label in every output
    prune_rate: float   # k, fraction of weights kept
    model: torch.nn.Module
    config: argparse.Namespace  # structure the model was built with


def ticket_files(folder):
    """Checkpoint files in ``folder``, sorted by name (hidden/temporary files ignored)."""
    if not os.path.isdir(folder):
        raise UserError(f"ticket folder '{folder}' does not exist")
    names = sorted(n for n in os.listdir(folder) if n.endswith(CHECKPOINT_EXTENSIONS) and not n.startswith("."))
    return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]


def k_from_name(path):
    """k from a file named ``<net>_<k>.pth``; None if the name has no such number."""
    stem = os.path.splitext(os.path.basename(path))[0]
    match = K_IN_NAME.search(stem)
    if not match:
        return None
    k = float(match.group(1))
    return k if 0.0 < k <= 1.0 else None


def kept_fraction(ckpt, path):
    """k from the checkpoint's ``prune_rate`` (our files), else from the file name."""
    k = ckpt.get("prune_rate") if isinstance(ckpt, dict) else None
    if isinstance(k, (int, float)) and 0.0 < float(k) <= 1.0:
        return float(k)
    return k_from_name(path)


def ticket_config(cfg, ckpt):
    """``cfg`` with the model-structure flags the checkpoint was searched with (when stored)."""
    out = argparse.Namespace(**vars(cfg))
    saved = ckpt.get("config") if isinstance(ckpt, dict) else None
    if isinstance(saved, dict):
        for key in STRUCTURE_KEYS:
            if key in saved:
                setattr(out, key, saved[key])
    return out


def load_ticket(cfg, path, info, device):
    """Build and load one ticket (eval mode, no parameter gradients). UserError if unusable."""
    ckpt = load_checkpoint(path)
    k = kept_fraction(ckpt, path)
    if k is None:
        raise UserError(f"'{os.path.basename(path)}': no kept fraction in the checkpoint and none in "
                        "the file name (expected <net>_<k>.pth)")
    mcfg = ticket_config(cfg, ckpt)
    check_arch(ckpt, mcfg.arch, path)
    model = build_model(mcfg, mcfg.num_classes or info.num_classes, info.in_channels, info.image_size,
                        info.mean, info.std, prune_rate=k)
    load_model_state(model, extract_state_dict(ckpt, path), strict=not cfg.not_strict, path=path)
    for m in masked_layers(model):
        m.clear_cache()
    model = model.to(device).eval().requires_grad_(False)
    return Ticket(path, os.path.basename(path), k, model, mcfg)


def resolve_pretrained(cfg):
    """(folder, source file or None) from ``--pretrained`` (a ticket file, or a folder)."""
    path = cfg.pretrained
    if not path:
        raise UserError("test_trans.py needs --pretrained DIR/<net>_<k>.pth (the source ticket; every "
                        "checkpoint in DIR is a target)")
    if os.path.isdir(path):
        if not (cfg.all_sources or cfg.r2s):
            raise UserError(f"--pretrained '{path}' is a folder: name the source ticket file, or pass "
                            "--all_sources or --r2s to use every ticket in it")
        return path, None
    if not os.path.isfile(path):
        raise UserError(f"source ticket '{path}' not found")
    return os.path.dirname(os.path.abspath(path)), os.path.abspath(path)


def load_tickets(cfg, folder, info, device, source=None):
    """Every usable ticket in ``folder`` (sorted) and the list of skipped files with reasons.

    A file that cannot be used as a ticket is skipped with a warning, unless it is
    the source, which is an error. No usable ticket at all is an error.
    """
    files = ticket_files(folder)
    if not files:
        raise UserError(f"no checkpoints ({', '.join(CHECKPOINT_EXTENSIONS)}) in '{folder}'")
    tickets, skipped = [], []
    for path in files:
        try:
            tickets.append(load_ticket(cfg, path, info, device))
        except UserError as exc:
            if source and os.path.abspath(path) == source:
                raise
            log.warning("skipped %s: %s", os.path.basename(path), exc)
            skipped.append({"file": os.path.basename(path), "reason": str(exc)})
    if not tickets:
        raise UserError(f"none of the {len(files)} checkpoints in '{folder}' is a usable ticket")
    log.info("%d tickets: %s", len(tickets), ", ".join(f"{t.name} (k={t.prune_rate:g})" for t in tickets))
    return tickets, skipped


def transfer_accuracy(source, targets, loader, device, attack, seed):
    """Top-1 accuracy (%) of each target on the adversarial examples of ``source``.

    Examples are generated batch by batch (never stored); the attack's random
    starts come from torch's RNG seeded with ``seed`` (the caller's RNG state is kept).
    """
    correct, total = torch.zeros(len(targets), dtype=torch.float64), 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            x_adv = attack(source, x, y)
            with torch.no_grad():
                for j, target in enumerate(targets):
                    correct[j] += (target(x_adv).argmax(1) == y).sum().item()
            total += len(y)
    return (100.0 * correct / max(1, total)).tolist()


def compute_transfer(cfg, tickets, sources, loader, device):
    """Matrix rows for ``sources`` (indices) and each ticket's natural and own robust accuracy."""
    seed, pgd = int(cfg.seed or 0), EVAL_ATTACKS.get("pgd")(cfg)
    models = [t.model for t in tickets]
    natural = [evaluate(m, loader, device, desc="natural")["acc1"] for m in models]
    rows, robust = [], [None] * len(tickets)
    for s, ticket in enumerate(tickets):
        if s in sources:
            log.info("PGD-20 from %s -> every ticket", ticket.name)
            rows.append(transfer_accuracy(ticket.model, models, loader, device, pgd, seed))
            robust[s] = rows[-1][s]
        elif cfg.eval_attack == "pgd":
            log.info("PGD-20 white-box on %s", ticket.name)
            robust[s] = transfer_accuracy(ticket.model, [ticket.model], loader, device, pgd, seed)[0]
    if cfg.eval_attack != "pgd":
        attack = EVAL_ATTACKS.get(cfg.eval_attack)(cfg)
        for s, ticket in enumerate(tickets):
            log.info("%s on %s", cfg.eval_attack, ticket.name)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                robust[s] = evaluate(ticket.model, loader, device, attack=attack, desc=cfg.eval_attack)["acc1"]
    return rows, natural, robust


def label(ticket):
    return f"{ticket.name} (k={ticket.prune_rate:g})"


def transfer_report(cfg, tickets, sources, rows, natural, robust, skipped, n_eval):
    return {"files": [t.name for t in tickets], "prune_rates": [t.prune_rate for t in tickets],
            "natural_acc1": natural, "robust_acc1": robust, "robust_attack": cfg.eval_attack,
            "sources": [tickets[s].name for s in sources], "matrix": rows,
            "matrix_attack": "pgd20 transfer (step 2/255, one random start, early stop)",
            "epsilon": cfg.epsilon, "set": cfg.set, "n_eval": n_eval, "seed": int(cfg.seed or 0),
            "skipped": skipped}


def write_csv(path, tickets, sources, rows, natural):
    """Rows: natural accuracy, then one row per source; columns: target tickets."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["source \\ target"] + [label(t) for t in tickets])
        writer.writerow(["natural"] + [f"{a:.2f}" for a in natural])
        for s, row in zip(sources, rows):
            writer.writerow([label(tickets[s])] + [f"{a:.2f}" for a in row])


def write_transfer_files(run, cfg, tickets, sources, rows, natural, robust, skipped, n_eval):
    """transfer_matrix.{json,csv,png} and robust_vs_k.png in the run directory."""
    from utils import plots

    report = transfer_report(cfg, tickets, sources, rows, natural, robust, skipped, n_eval)
    run.write_json("transfer_matrix.json", report)
    write_csv(run.path("transfer_matrix.csv"), tickets, sources, rows, natural)
    plots.heatmap(rows, [label(tickets[s]) for s in sources], [label(t) for t in tickets],
                  run.path("transfer_matrix.png"),
                  title=f"robust accuracy (%) under PGD-20 transfer, eps {cfg.epsilon:g}/255, {cfg.set}")
    attack_name = "PGD-20" if cfg.eval_attack == "pgd" else cfg.eval_attack
    plots.robust_vs_k([t.prune_rate for t in tickets], natural, robust, run.path("robust_vs_k.png"),
                      robust_label=f"{attack_name} (eps {cfg.epsilon:g}/255)", title=f"tickets on {cfg.set}")
    return report


def run_r2s(cfg, run, tickets, skipped, info, loader, device):
    """Build the R2S model of every ticket, save it packed, evaluate it: r2s.json."""
    from utils import plots

    seed = int(cfg.seed or 0)
    r2s = r2s_eval.r2s_from_tickets(tickets, info, seed).to(device)
    path = run.ckpt("r2s.pth")
    atomic_save(r2s.state(), path)
    result = r2s_eval.evaluate_r2s(r2s, loader, device, cfg, seed)
    result.update(model_file=path, disk=r2s_eval.disk_usage(r2s, path, tickets), skipped=skipped)
    run.write_json("r2s.json", result)
    members, attacks = result["members"], result["attacks"]
    plots.robust_vs_k([m["prune_rate"] for m in members], [m["natural_acc1"] for m in members],
                      [m["robust_acc1"] for m in members], run.path("robust_vs_k.png"),
                      robust_label=f"PGD-20 (eps {cfg.epsilon:g}/255)", title=f"tickets and R2S on {cfg.set}",
                      hlines={"R2S natural": result["natural_acc1"]["mean"],
                              "R2S, PGD-20 transfer (strong, min over members)": attacks["transfer_strong_min"]["mean"],
                              "R2S, PGD-20 transfer (paper, min over members)": attacks["transfer_paper_min"]["mean"],
                              "R2S, worst case of all attacks": result["worst_case"]["mean"]})
    log.info("%s", r2s_eval.summary_line(result))
    return result


def run_transfer(cfg):
    """test_trans.py: the transfer matrix (default: the source row) or, with --r2s, R2S."""
    setup_logging()
    seed_all(cfg.seed)
    device = select_device(cfg, DistContext())
    folder, source = resolve_pretrained(cfg)
    EVAL_ATTACKS.get(cfg.eval_attack)
    data = build_dataset(cfg)
    tickets, skipped = load_tickets(cfg, folder, data.info, device, source)
    index = {os.path.abspath(t.path): i for i, t in enumerate(tickets)}
    if source is not None:
        cfg.prune_rate = tickets[index[source]].prune_rate  # run directory .../prune_rate=<source k>/transfer
    loader = make_loader(subset(data.val, cfg.n_eval), cfg.test_batch_size, False, cfg, seed=cfg.seed or 0)
    run = Run(cfg, True, task="transfer")
    try:
        if cfg.r2s:
            return run_r2s(cfg, run, tickets, skipped, data.info, loader, device)
        sources = list(range(len(tickets))) if cfg.all_sources else [index[source]]
        rows, natural, robust = compute_transfer(cfg, tickets, sources, loader, device)
        report = write_transfer_files(run, cfg, tickets, sources, rows, natural, robust, skipped,
                                      len(loader.dataset))
        for s, row in zip(sources, rows):
            log.info("robust accuracy under PGD-20 from %s: %s", tickets[s].name, [round(a, 2) for a in row])
        log.info("results in %s", run.dir)
        return report
    finally:
        run.close()
