"""Transferability between tickets (test_trans.py): loading a folder of tickets,
the source x target robust-accuracy matrices under PGD-20 transfer, and R2S.

A ticket folder holds checkpoints named ``<net>_<k>.pth`` (the original's layout)
or written by main.py (which store ``prune_rate``, k = fraction kept, and the config).
k comes from the checkpoint's metadata, else from the file name; a file with
neither is skipped with a warning. The model structure (arch, width, layer types)
comes from the checkpoint's stored config when present, else from the command line.

Two transfer protocols, both PGD-20 (step 2/255, one random start) on the source:
``paper``, the original's, where each example stops moving once the source
misclassifies it (so it sits just past the source's boundary and transfers poorly),
and ``strong``, where every example moves for all 20 steps and keeps the iterate
with the highest source loss. Both come from one trajectory per source and batch
(``paper_and_strong``), generated once on the evaluation set (``--n_eval``
examples, random starts seeded by ``--seed``) and evaluated by every target.
Every ticket's own robust accuracy (white-box ``--eval_attack``: PGD-20, or
AutoAttack) is always measured; with PGD-20 it is the paper matrix's diagonal.
"""
import argparse
import logging
import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data import build_dataset, make_loader, subset
from models import build_model, masked_layers
from models.r2s import STRUCTURE_KEYS
from attacks.pgd import input_gradient, random_start, sign_step
from trainers import r2s_eval, transfer_files
from trainers.evaluate import EVAL_ATTACKS, evaluate
from utils.checkpoint import atomic_save, check_arch, extract_state_dict, load_checkpoint, load_model_state
from utils.config import show_progress
from utils.distributed import DistContext, select_device
from utils.errors import UserError
from utils.eval_checks import check_eval_settings
from utils.provenance import eval_protocol
from utils.run_dir import Run, setup_logging
from utils.seed import seed_all

log = logging.getLogger("rst")
CHECKPOINT_EXTENSIONS = (".pth", ".pt", ".state")
# '<net>_<k>.pth': k is the number after the last underscore of the stem (0.01, 5e-2, 1)
K_IN_NAME = re.compile(r"_((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$")
PGD_STEP, PGD_ITERS = 2 / 255, 20  # the evaluation PGD-20 (attacks.pgd.pgd20), [0, 1] units
PROTOCOLS = ("strong", "paper")     # transfer protocols, headline first (see paper_and_strong)


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


def paper_and_strong(source, x, y, epsilon, step=PGD_STEP, iters=PGD_ITERS):
    """Both protocols' transfer examples from ONE PGD trajectory on ``source`` (radii in [0, 1]).

    paper: where the original's early-stopped PGD-20 (``attacks.pgd.pgd20``) leaves each
    example: the first iterate the source misclassifies (early stop freezes it there),
    else the last. strong: the iterate with the highest source loss, start and last
    included (``attacks.pgd.pgd_transfer``). Early stop only freezes examples, so until
    an example is frozen both attacks take the same steps from the same random start:
    one trajectory, one random draw, gives both (tests check equality with the two
    functions), at the cost of the strong attack alone.
    """
    shape = (-1,) + (1,) * (x.dim() - 1)
    delta = random_start(x, epsilon)
    paper, frozen = delta, torch.zeros(len(y), dtype=torch.bool, device=x.device)
    strong, strong_loss = delta, None
    for _ in range(iters):
        grad, logits = input_gradient(source, x, delta, y)
        wrong = logits.argmax(1) != y
        paper = torch.where((wrong & ~frozen).view(shape), delta, paper)
        frozen |= wrong
        strong, strong_loss = keep_higher(delta, logits, y, strong, strong_loss)
        delta = sign_step(x, delta, grad, step, epsilon)
    with torch.no_grad():
        strong, _ = keep_higher(delta, source(x + delta), y, strong, strong_loss)
    paper = torch.where(frozen.view(shape), paper, delta)
    return (x + paper).detach(), (x + strong).detach()


def keep_higher(delta, logits, y, best, best_loss):
    """Per example the perturbation with the higher source cross-entropy (ties: the later one)."""
    loss = F.cross_entropy(logits.float(), y, reduction="none")
    if best_loss is None:
        return delta, loss
    better = (loss >= best_loss).view(-1, *[1] * (delta.dim() - 1))
    return torch.where(better, delta, best), torch.max(loss, best_loss)


def source_rows(source, targets, loader, device, epsilon, seed, progress=False, desc="transfer"):
    """{protocol: accuracy (%) of each target} on ``source``'s transfer examples (see paper_and_strong)."""
    correct = {p: torch.zeros(len(targets), dtype=torch.float64) for p in PROTOCOLS}
    total = 0
    with rng_fork(device):
        torch.manual_seed(seed)
        for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress):
            x, y = x.to(device), y.to(device)
            examples = dict(zip(("paper", "strong"), paper_and_strong(source, x, y, epsilon)))
            with torch.no_grad():
                for j, target in enumerate(targets):
                    for p in PROTOCOLS:
                        correct[p][j] += (target(examples[p]).argmax(1) == y).sum().item()
            total += len(y)
    return {p: (100.0 * c / max(1, total)).tolist() for p, c in correct.items()}


def compute_transfer(cfg, tickets, sources, loader, device):
    """({protocol: matrix rows for ``sources``}, natural accuracy, own robust accuracy) per ticket.

    Own robust accuracy is white-box ``--eval_attack`` (PGD-20 by default: the paper
    matrix's diagonal where the ticket is a source).
    """
    seed, eps, pgd = int(cfg.seed or 0), cfg.epsilon / 255, EVAL_ATTACKS.get("pgd")(cfg)
    bar = show_progress(cfg)
    models = [t.model for t in tickets]
    natural = [evaluate(m, loader, device, desc=f"natural {t.name}", progress=bar)["acc1"]
               for m, t in zip(models, tickets)]
    rows, robust = {p: [] for p in PROTOCOLS}, [None] * len(tickets)
    for s, ticket in enumerate(tickets):
        if s in sources:
            log.info("PGD-20 (paper and strong) from %s -> every ticket", ticket.name)
            row = source_rows(ticket.model, models, loader, device, eps, seed, progress=bar,
                              desc=f"source {s + 1}/{len(tickets)} {ticket.name}")
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
    return rows, natural, robust


def run_r2s(cfg, run, tickets, skipped, info, loader, device):
    """Build the R2S model of every ticket, save it packed, evaluate it: r2s.json."""
    from utils import plots

    seed = int(cfg.seed or 0)
    r2s = r2s_eval.r2s_from_tickets(tickets, info, seed).to(device)
    path = run.ckpt("r2s.pth")
    atomic_save(r2s.state(), path)
    result = r2s_eval.evaluate_r2s(r2s, loader, device, cfg, seed)
    result.update(model_file=path, disk=r2s_eval.disk_usage(r2s, path, tickets), skipped=skipped)
    # the headline number's protocol: each attack's own is under attacks.<name>.protocol
    result["eval_protocol"] = eval_protocol(cfg, attack="r2s_worst_case", val_split=None, examples=result["n_eval"],
                                            headline="worst_case", covers=result["worst_case"]["protocol"])
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
    """Both transfer matrices: computed, written (json, csv, png), and the original's lines logged."""
    rows, natural, robust = compute_transfer(cfg, tickets, sources, loader, device)
    report = transfer_files.write_transfer_files(run, cfg, tickets, sources, rows, natural, robust, skipped,
                                                 len(loader.dataset), robust_vs_k=not cfg.r2s)
    for line in transfer_files.original_lines(report, cfg.pretrained) + transfer_files.protocol_lines(report):
        log.info("%s", line)
    return report


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
    run = Run(cfg, True, task="transfer")
    try:
        report = run_matrix(cfg, run, tickets, sources, skipped, loader, device) if sources else None
        if cfg.r2s:
            r2s = run_r2s(cfg, run, tickets, skipped, data.info, loader, device)
            report = r2s if report is None else dict(report, r2s=r2s)
        log.info("results in %s", run.dir)
        return report
    finally:
        run.close()
