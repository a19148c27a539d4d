"""What test_trans.py writes: transfer_matrix.{json,csv,png}, robust_vs_k.png, and its printed lines.

Both transfer protocols (``strong`` first, the headline; ``paper``, the original's)
are written side by side, each with its protocol record (utils.provenance).
"""
import csv
import os

from attacks.aa_cost import label as attack_label
from evaluation.evaluate import attack_settings
from utils.provenance import eval_protocol

PROTOCOL_TITLES = {"strong": "strong: PGD-20, per target the worse of the early-stopped and highest-source-loss "
                             "iterates",
                   "paper": "paper: PGD-20 with early stop, the original's"}
# ticket-level evaluation: no R2S sampling, no selection split
NOT_USED = {"eot_samples": None, "eot_steps": None, "passes": None, "val_split": None}


def label(ticket):
    return f"{ticket.name} (k={ticket.prune_rate:g})"


def transfer_report(cfg, tickets, sources, rows, natural, robust, skipped, examples, robust_ran=None,
                    selection=None):
    """transfer_matrix.json: per ticket natural and own robust accuracy, and both matrices
    (rows: sources; columns: every ticket as target), each with its protocol.
    ``robust_ran``: what the white-box attack recorded while running (AutoAttack's settings,
    read off the reference objects); ``selection``: how each ticket was selected."""
    common = dict(NOT_USED, examples=examples, transfer="examples generated on the source, evaluated on "
                  "every target; one random start per source and batch, shared by both protocols",
                  amp="none (test_trans.py runs in fp32)")
    robust_settings = attack_settings(cfg.eval_attack, cfg)
    if robust_ran:
        robust_settings.update(robust_ran, autoattack=robust_ran)
    return {"files": [t.name for t in tickets], "prune_rates": [t.prune_rate for t in tickets],
            "natural_acc1": natural, "robust_acc1": robust, "robust_attack": cfg.eval_attack,
            "robust_label": attack_label(robust_settings, "PGD-20" if cfg.eval_attack == "pgd" else cfg.eval_attack),
            "robust_protocol": eval_protocol(cfg, settings=robust_settings, **dict(
                common, white_box=True, transfer=None)),
            "sources": [tickets[s].name for s in sources],
            "matrices": {p: rows[p] for p in PROTOCOL_TITLES},
            "protocols": {"strong": eval_protocol(cfg, attack="pgd_transfer",
                                                  settings=attack_settings("pgd_transfer", cfg), **common),
                          "paper": eval_protocol(cfg, attack="pgd", settings=attack_settings("pgd", cfg), **common)},
            "ticket_selection": selection, "set": cfg.set, "n_eval": examples, "skipped": skipped}


def write_csv(path, tickets, sources, rows, natural):
    """Rows: natural accuracy, then one row per (protocol, source); columns: target tickets."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["protocol", "source \\ target"] + [label(t) for t in tickets])
        writer.writerow(["", "natural"] + [f"{a:.2f}" for a in natural])
        for protocol in PROTOCOL_TITLES:
            for s, row in zip(sources, rows[protocol]):
                writer.writerow([protocol, label(tickets[s])] + [f"{a:.2f}" for a in row])


def strongest_other_source(tickets, sources, strong):
    """Per target: the lowest strong-transfer accuracy over sources other than itself (None if none)."""
    out = []
    for j in range(len(tickets)):
        values = [row[j] for s, row in zip(sources, strong) if s != j]
        out.append(min(values) if values else None)
    return out


def write_transfer_files(run, cfg, tickets, sources, rows, natural, robust, skipped, examples, robust_vs_k=True,
                         robust_ran=None, selection=None):
    """transfer_matrix.{json,csv,png} and (unless R2S writes its own) robust_vs_k.png."""
    from utils import plots

    report = transfer_report(cfg, tickets, sources, rows, natural, robust, skipped, examples, robust_ran, selection)
    run.write_json("transfer_matrix.json", report)
    write_csv(run.path("transfer_matrix.csv"), tickets, sources, rows, natural)
    plots.heatmaps([(PROTOCOL_TITLES[p], rows[p]) for p in PROTOCOL_TITLES], [label(tickets[s]) for s in sources],
                   [label(t) for t in tickets], run.path("transfer_matrix.png"),
                   title=f"robust accuracy (%) under PGD-20 transfer, eps {cfg.epsilon:g}/255, {cfg.set}")
    if robust_vs_k:
        attack_name = report["robust_label"]
        transferred = strongest_other_source(tickets, sources, rows["strong"])
        curves = {}
        if any(v is not None for v in transferred):
            curves["strong transfer, strongest other source"] = transferred
        plots.robust_vs_k([t.prune_rate for t in tickets], natural, robust, run.path("robust_vs_k.png"),
                          robust_label=f"{attack_name} white-box (eps {cfg.epsilon:g}/255)",
                          title=f"tickets on {cfg.set}", curves=curves)
    return report


def original_lines(report, pretrained):
    """The original test_trans.py's result lines, per source: ``Robust Acc of <path>: <acc>`` for
    every target (paths as it built them: the --pretrained file's folder joined with the file
    name) and ``Acc list: [...]``. Its protocol is ``paper``; ``protocol_lines`` label both."""
    folder = pretrained if os.path.isdir(pretrained) else os.path.dirname(pretrained)
    lines = []
    for row in report["matrices"]["paper"]:
        lines += [f"Robust Acc of {os.path.join(folder, name)}: {acc:f}" for name, acc in zip(report["files"], row)]
        lines.append(f"Acc list: {row}")
    return lines


def protocol_lines(report):
    """One labelled line per (protocol, source): the accuracy of every target, in file order."""
    return [f"{protocol} transfer ({PROTOCOL_TITLES[protocol].split(': ', 1)[1]}) from {source}: "
            f"{[round(a, 2) for a in row]}"
            for protocol in PROTOCOL_TITLES
            for source, row in zip(report["sources"], report["matrices"][protocol])]
