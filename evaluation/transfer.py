"""Transferability between tickets (test_trans.py): loading a folder of tickets,
the source x target robust-accuracy matrices under PGD-20 transfer, and R2S.

A ticket folder holds checkpoints named ``<net>_<k>.pth`` (the original's layout)
or written by main.py (which store ``prune_rate``, k = fraction kept, and the config).
k comes from the checkpoint's metadata, else from the file name; a file with
neither is skipped with a warning. The model structure (arch, width, layer types)
comes from the checkpoint's stored config when present, else from the command line.
A ``tickets.py bundle`` file (one seed, N coded masks) stands for such a folder.

Two transfer protocols, both PGD-20 (step 2/255, one random start) on the source:
``paper``, the original's, where each example stops moving once the source
misclassifies it (so it sits just past the source's boundary and transfers poorly),
and ``strong``, per target and example the worse of that early-stopped iterate and
the iterate with the highest source loss (every example moving for all 20 steps), so
strong <= paper in every cell. Both come from one trajectory per source and batch
(``evaluation.transfer_examples``), generated once on the evaluation set (``--n_eval``
examples, random starts seeded by ``--seed``) and evaluated by every target; R2S's
transfer rows are scored from the same examples.
Every ticket's own robust accuracy (white-box ``--eval_attack``: PGD-20, or
AutoAttack) is always measured; with PGD-20 it is the paper matrix's diagonal.
"""
import argparse
import logging
import json
import os
import re
from dataclasses import dataclass

import torch
from tqdm import tqdm

from data import build_dataset, make_loader, subset
from models import build_model, masked_layers
from models.r2s import STRUCTURE_KEYS
from evaluation import r2s_eval, transfer_files
from evaluation.transfer_examples import (accuracy_row, paper_and_strong, protocol_correctness,  # noqa: F401
                                        source_correctness, PGD_STEP)
from evaluation.evaluate import EVAL_ATTACKS, eval_step, evaluate
from utils.checkpoint import atomic_save, check_arch, extract_state_dict, load_checkpoint, load_model_state
from utils.config import show_progress
from utils.distributed import DistContext, select_device
from utils.errors import UserError
from utils.eval_checks import check_eval_settings
from utils.run_guard import choose_run_dir
from utils.provenance import eval_protocol
from utils.run_dir import Run, setup_logging
from utils.seed import seed_all
from utils.ticket_format import is_bundle

log = logging.getLogger("rst")
CHECKPOINT_EXTENSIONS = (".pth", ".pt", ".state")
# '<net>_<k>.pth': k is the number after the last underscore of the stem (0.01, 5e-2, 1)
K_IN_NAME = re.compile(r"_((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$")
PROTOCOLS = ("strong", "paper")     # transfer protocols, headline first (see paper_and_strong)


@dataclass
class Ticket:
    path: str
    name: str           # file name, the ticket's label in every output
    prune_rate: float   # k, fraction of weights kept
    model: torch.nn.Module
    config: argparse.Namespace  # structure the model was built with
    meta: dict = None   # how the checkpoint was selected, as it records it (``selection_record``)


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
    return ticket_from_checkpoint(cfg, load_checkpoint(path), path, os.path.basename(path), info, device)


def ticket_from_checkpoint(cfg, ckpt, path, name, info, device):
    """The Ticket ``name`` of a loaded checkpoint dict (``path``: the file it came from)."""
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
    return Ticket(path, name, k, model, mcfg, selection_record(ckpt))


def bundle_tickets(cfg, path, info, device):
    """Every member of a ``tickets.py bundle`` file, in its order (one regeneration of the network)."""
    from models.seeded import decode_bundle
    tickets = [ticket_from_checkpoint(cfg, ckpt, path, name, info, device)
               for name, ckpt in decode_bundle(load_checkpoint(path), path)]
    log.info("bundle %s: %d tickets: %s", path, len(tickets), ", ".join(f"{t.name} (k={t.prune_rate:g})" for t in tickets))
    return tickets, []


def selection_record(ckpt):
    """What a checkpoint says about how it was chosen: epochs done, the best (selected) epoch, and
    the split and metric that chose it (None where it does not say: the original's files)."""
    if not isinstance(ckpt, dict):
        return {}
    saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    split = None
    if saved:
        split = (f"hold-out {saved['val_split']:g} of the training set" if saved.get("val_split")
                 else "test split (the paper's protocol)")
    epoch, best = ckpt.get("epoch"), ckpt.get("best_epoch")
    return {"task": ckpt.get("task"), "epochs_done": epoch, "best_epoch": best, "best_acc1": ckpt.get("best_acc1"),
            "selection_split": split,
            "selection_metric": (("robust" if saved.get("attack_type") else "natural") + " top-1") if saved else None,
            "is_best_epoch": None if epoch is None or best is None else epoch == best + 1}


def resolve_pretrained(cfg):
    """(folder, source file or None) from ``--pretrained`` (a ticket file, or a folder); a
    ``tickets.py bundle`` file stands for the folder of its members: (the file, None)."""
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
    if is_bundle(load_checkpoint(path)):  # tickets.py bundle: its members are the tickets
        if not (cfg.all_sources or cfg.r2s):
            raise UserError(f"--pretrained '{path}' is a ticket bundle: pass --r2s and/or --all_sources to use "
                            "its tickets")
        return os.path.abspath(path), None
    return os.path.dirname(os.path.abspath(path)), os.path.abspath(path)


def load_tickets(cfg, folder, info, device, source=None):
    """Every usable ticket in ``folder`` (sorted) and the list of skipped files with reasons
    (or every member of ``folder`` when it is a bundle file, see ``resolve_pretrained``).

    A file that cannot be used as a ticket is skipped with a warning, unless it is
    the source, which is an error. No usable ticket at all is an error.
    """
    if os.path.isfile(folder):
        return bundle_tickets(cfg, folder, info, device)
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


def rng_fork(device):
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def transfer_accuracy(source, targets, loader, device, attack, seed, progress=False, desc="transfer"):
    """Top-1 accuracy (%) of each target on the adversarial examples of ``source``.

    Examples are generated batch by batch (never stored); the attack's random
    starts come from torch's RNG seeded with ``seed`` (the caller's RNG state is kept).
    ``progress``: a bar per batch on stderr.
    """
    correct, total = torch.zeros(len(targets), dtype=torch.float64), 0
    with rng_fork(device):
        torch.manual_seed(seed)
        for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress):
            x, y = x.to(device), y.to(device)
            x_adv = attack(source, x, y)
            with torch.no_grad():
                for j, target in enumerate(targets):
                    correct[j] += (target(x_adv).argmax(1) == y).sum().item()
            total += len(y)
    return (100.0 * correct / max(1, total)).tolist()


def source_rows(source, targets, loader, device, epsilon, seed, progress=False, desc="transfer", step=PGD_STEP):
    """{protocol: accuracy (%) of each target} on ``source``'s transfer examples (PGD-20 of ``step``,
    [0, 1] units), and the per-example correctness they come from (see ``evaluation.transfer_examples``)."""
    correct = source_correctness(source, targets, loader, device, epsilon, seed, progress=progress, desc=desc,
                                 step=step)
    return {p: accuracy_row(c) for p, c in protocol_correctness(correct).items()}, correct


def compute_transfer(cfg, tickets, sources, loader, device):
    """({protocol: matrix rows for ``sources``}, natural accuracy, own robust accuracy per
    ticket, details): details["correct"][s] is source s's per-example correctness on every
    ticket (R2S scores its transfer rows from it), details["robust_ran"] what the
    white-box attack ran when it records that (AutoAttack).

    Own robust accuracy is white-box ``--eval_attack`` (PGD-20 by default: the paper
    matrix's diagonal where the ticket is a source).
    """
    seed, eps, pgd = int(cfg.seed or 0), cfg.epsilon / 255, EVAL_ATTACKS.get("pgd")(cfg)
    bar = show_progress(cfg)
    models = [t.model for t in tickets]
    natural = [evaluate(m, loader, device, desc=f"natural {t.name}", progress=bar)["acc1"]
               for m, t in zip(models, tickets)]
    rows, robust, details = {p: [] for p in PROTOCOLS}, [None] * len(tickets), {"correct": {}, "robust_ran": None}
    for s, ticket in enumerate(tickets):
        if s in sources:
            log.info("PGD-20 (paper and strong) from %s -> every ticket", ticket.name)
            row, details["correct"][s] = source_rows(ticket.model, models, loader, device, eps, seed, progress=bar,
                                                     desc=f"source {s + 1}/{len(tickets)} {ticket.name}",
                                                     step=eval_step(cfg))
            for p in PROTOCOLS:
                rows[p].append(row[p])
            robust[s] = row["paper"][s]
        elif cfg.eval_attack == "pgd":
            log.info("PGD-20 white-box on %s", ticket.name)
            robust[s] = transfer_accuracy(ticket.model, [ticket.model], loader, device, pgd, seed, progress=bar,
                                          desc=f"PGD-20 {ticket.name}")[0]
    if cfg.eval_attack != "pgd":
        attack = EVAL_ATTACKS.get(cfg.eval_attack)(cfg)
        for s, ticket in enumerate(tickets):
            log.info("%s on %s", cfg.eval_attack, ticket.name)
            with rng_fork(device):
                torch.manual_seed(seed)
                robust[s] = evaluate(ticket.model, loader, device, attack=attack, progress=bar,
                                     desc=f"{cfg.eval_attack} {ticket.name}")["acc1"]
        details["robust_ran"] = attack.protocol() if hasattr(attack, "protocol") else None
    return rows, natural, robust, details


def ticket_selection(tickets):
    """How each ticket was selected, as its checkpoint records it (see ``selection_record``)."""
    return [dict({"file": t.name, "prune_rate": t.prune_rate}, **(t.meta or {})) for t in tickets]


def run_r2s(cfg, run, tickets, skipped, info, loader, device, correct=None):
    """Build the R2S model of every ticket, save it packed, evaluate it: r2s.json.

    ``correct``: per-example transfer correctness of the sources the matrix already ran
    (``compute_transfer``); R2S's transfer rows are scored from those same examples, and
    the other sources are computed here the same way.
    """
    from utils import plots

    seed = int(cfg.seed or 0)
    r2s = r2s_eval.r2s_from_tickets(tickets, info, seed).to(device)
    path = run.ckpt("r2s.pth")
    atomic_save(r2s.state(), path)
    correct = dict(correct or {})
    for j, ticket in enumerate(tickets):
        if j not in correct:
            log.info("PGD-20 transfer examples from %s (R2S member %d)", ticket.name, j)
            correct[j] = source_correctness(ticket.model, [t.model for t in tickets], loader, device,
                                            cfg.epsilon / 255, seed, step=eval_step(cfg))
    result = r2s_eval.evaluate_r2s(r2s, loader, device, cfg, seed, transfer=[correct[j] for j in range(len(tickets))])
    result.update(model_file=path, disk=r2s_eval.disk_usage(r2s, path, tickets), skipped=skipped,
                  ticket_selection=ticket_selection(tickets))
    # the headline number's protocol: each attack's own is under attacks.<name>.protocol
    result["eval_protocol"] = eval_protocol(cfg, attack="r2s_worst_case", val_split=None, examples=result["n_eval"],
                                            headline="worst_case", covers=result["worst_case"]["protocol"],
                                            amp="none (test_trans.py evaluates in fp32)",
                                            **r2s_eval.headline(result["attacks"]))
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


def transfer_sources(cfg, tickets, source):
    """Indices of the source tickets: every ticket (--all_sources), the --pretrained file, or none
    (a folder with --r2s only)."""
    if cfg.all_sources:
        return list(range(len(tickets)))
    return [] if source is None else [source_index(tickets, source)]


def source_index(tickets, source):
    return [os.path.abspath(t.path) for t in tickets].index(source)


def run_matrix(cfg, run, tickets, sources, skipped, loader, device):
    """Both transfer matrices: computed, written (json, csv, png), and the original's lines logged.
    Returns the report and the per-example correctness of each source (for R2S)."""
    rows, natural, robust, details = compute_transfer(cfg, tickets, sources, loader, device)
    report = transfer_files.write_transfer_files(run, cfg, tickets, sources, rows, natural, robust, skipped,
                                                 len(loader.dataset), robust_vs_k=not cfg.r2s,
                                                 robust_ran=details["robust_ran"],
                                                 selection=ticket_selection(tickets))
    for line in transfer_files.original_lines(report, cfg.pretrained) + transfer_files.protocol_lines(report):
        log.info("%s", line)
    return report, details["correct"]


def already_finished(where):
    """A finished test_trans.py run with these settings is there: report it, touch nothing."""
    name = "r2s.json" if os.path.isfile(os.path.join(where.dir, "r2s.json")) else "transfer_matrix.json"
    log.info("already finished with these settings: %s (nothing done; --force runs it again into a new "
             "numbered sibling)", where.dir)
    with open(os.path.join(where.dir, name)) as fh:
        return dict(json.load(fh), already_finished=True, run_dir=where.dir)


def run_transfer(cfg):
    """test_trans.py: the transfer matrices (the source row, or every row with --all_sources)
    and, with --r2s, the R2S report. Returns the transfer report (with the R2S report
    under "r2s" when both ran), or the R2S report alone."""
    setup_logging()
    check_eval_settings(cfg, "test_trans")
    seed_all(cfg.seed)
    device = select_device(cfg, DistContext())
    folder, source = resolve_pretrained(cfg)
    EVAL_ATTACKS.get(cfg.eval_attack)
    data = build_dataset(cfg)
    tickets, skipped = load_tickets(cfg, folder, data.info, device, source)
    sources = transfer_sources(cfg, tickets, source)
    if source is not None:  # run directory .../prune_rate=<source k>/transfer
        cfg.prune_rate = tickets[source_index(tickets, source)].prune_rate
    loader = make_loader(subset(data.val, cfg.n_eval), cfg.test_batch_size, False, cfg, seed=cfg.seed or 0)
    where = choose_run_dir(cfg, "transfer", result="r2s.json" if cfg.r2s else "transfer_matrix.json")
    if where.reason:
        log.info("run: %s (not %s)", where.dir, where.reason)
    if where.finished:
        return already_finished(where)
    run = Run(cfg, True, task="transfer", name=where.name)
    try:
        report, correct = run_matrix(cfg, run, tickets, sources, skipped, loader, device) if sources else (None, {})
        if cfg.r2s:
            r2s = run_r2s(cfg, run, tickets, skipped, data.info, loader, device, correct)
            report = r2s if report is None else dict(report, r2s=r2s)
        log.info("results in %s", run.dir)
        return report
    finally:
        run.close()
