"""Collecting finished points into rows: ``<figure>.csv`` and ``<figure>.md``.

Training points (results.json): the selected epoch's accuracies on the test split
(``best_natural_acc1`` / ``best_robust_acc1``; the epoch is selected by PGD-20 accuracy
on the selection split, named in ``selection``), the selection metric itself
(``best_acc1``, with ``natural_acc1_at_best_robustness``), the last validation's
``natural_acc1``/``robust_acc1``, any ``last_*`` keys, and ``converged`` (see
``experiments.convergence``). Transfer points: the ``strong`` transfer matrix (the
headline), with the paper's early-stopped matrix's off-diagonal mean beside it, and the
R2S accuracies. An unfinished point gives a row with empty metrics.

Every point is one row per seed (``row`` = ``seed``); ``summary_rows`` adds one row per
point (``row`` = ``summary``) with the mean over seeds and, for the headline metrics,
``<metric>_sd`` and ``<metric>_ci95`` (half-width of the 95% interval, see
``experiments.stats``).
"""
import csv
import json
import os

from experiments.convergence import converged
from experiments.runner import point_status
from experiments.stats import describe

SETTINGS = ("set", "arch", "width_mult", "init", "conv_type", "epochs", "batch_size", "lr", "lr_policy",
            "attack_type", "attack_iters", "epsilon", "train_step", "eval_step", "n_eval", "seed")
TRAIN_METRICS = ("best_natural_acc1", "best_robust_acc1", "natural_acc1_at_best_robustness", "best_acc1",
                 "best_epoch", "natural_acc1", "robust_acc1")
HEADLINE = ("best_natural_acc1", "best_robust_acc1", "aa_robust_acc1", "r2s_natural", "r2s_transfer_paper",
            "r2s_transfer_strong", "r2s_worst_case", "offdiag_mean", "diag_mean", "offdiag_mean_paper")
NOT_SUMMED = set(SETTINGS) | {"k", "seed", "tickets", "epochs_done", "best_epoch", "aa_steps", "aa_n_eval"}


def _get(data, dotted, default=None):
    """``data['a']['b']`` for 'a.b'; a number, or a dict's 'mean'."""
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return default
        data = data[part]
    if isinstance(data, dict):
        data = data.get("mean")
    return data if isinstance(data, (int, float)) else default


def read_json(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def r2s_metrics(data):
    """R2S accuracies: today's keys, or the rewritten file's ``attacks.*`` keys."""
    return {"r2s_natural": _get(data, "natural_acc1"),
            "r2s_transfer_paper": _get(data, "attacks.transfer_paper_min", _get(data, "transfer_pgd20_min")),
            "r2s_transfer_strong": _get(data, "attacks.transfer_strong_min"),
            "r2s_worst_case": _get(data, "worst_case")}


def matrix_of(data, which="strong"):
    """(which, prune_rates, rows) of one protocol's matrix (``matrices.strong``, the
    headline, or ``matrices.paper``); files written before both existed hold only the
    paper's, as ``matrix``."""
    matrices = data.get("matrices") or {"paper": data.get("matrix") or []}
    which = which if which in matrices else "paper"
    return which, [float(k) for k in data.get("prune_rates", [])], matrices.get(which) or []


def autoattack_metrics(data):
    """A one-checkpoint test_trans.py run under --eval_attack: its natural and white-box accuracy and what ran."""
    ran = data.get("robust_protocol") or {}
    aa = ran.get("autoattack") or {}
    return {"aa_natural_acc1": (data.get("natural_acc1") or [None])[0],
            "aa_robust_acc1": (data.get("robust_acc1") or [None])[0],
            "aa_attack": ran.get("attack"), "aa_version": ran.get("aa_version") or aa.get("version"),
            "aa_steps": ran.get("aa_steps"), "aa_n_eval": data.get("n_eval")}


def transfer_metrics(data):
    """Off-diagonal and diagonal means of the strong matrix (the paper's off-diagonal mean beside it)."""
    which, ks, rows = matrix_of(data)
    mean = (lambda xs: sum(xs) / len(xs) if xs else None)

    def offdiag(m):
        return [a for i, row in enumerate(m) for j, a in enumerate(row) if i != j]

    off = offdiag(rows)
    diag = [row[i] for i, row in enumerate(rows) if i < len(row)]
    paper_rows = matrix_of(data, "paper")[2]
    return {"matrix": which, "tickets": len(ks), "natural_mean": mean(data.get("natural_acc1") or []),
            "offdiag_mean": mean(off), "offdiag_min": min(off, default=None),
            "diag_mean": mean(diag), "offdiag_mean_paper": mean(offdiag(paper_rows))}


def point_row(point, figure, rule=None):
    """One CSV row: the point's place in the figure, settings, metrics, run directory and command
    (``rule``: the spec's convergence rule)."""
    cfg = point.config()
    row = {"figure": figure, "row": "seed", "id": point.base or point.id, **point.fields, "task": point.task}
    row.update({k: getattr(cfg, k, None) for k in SETTINGS})
    status = point_status(point)
    data = read_json(point.result_path()) if status == "done" else None
    row["status"] = status
    if data is not None and point.result == "results.json":
        row.update({k: data.get(k) for k in TRAIN_METRICS})
        row.update({k: v for k, v in data.items() if k.startswith("last_") and isinstance(v, (int, float))})
        row["epochs_done"], row["train_seconds"] = data.get("epochs_done"), data.get("train_seconds")
        row["converged"] = converged(data.get("history"), data.get("epochs_done"), rule)
        row["selection"] = data.get("selection")
    elif data is not None and point.result == "r2s.json":
        row.update(r2s_metrics(data))
    elif data is not None and point.fields.get("panel") == "autoattack":
        row.update(autoattack_metrics(data))
    elif data is not None:
        row.update(transfer_metrics(data))
    row["run_dir"], row["command"] = point.run_dir(), point.command()
    return row


PER_SEED_LISTS = ("best_epoch", "epochs_done")     # summary rows list these per seed ('14/18/19')
PER_SEED_MEANS = {"offdiag_min": "offdiag_min_mean_over_seeds"}   # a mean of per-seed minima, named so


def summary_rows(rows):
    """One ``summary`` row per point id (in order): identifying fields, the mean of every metric over
    the seeds, ``_sd``/``_ci95`` of the headline metrics, ``n_seeds``, ``converged`` as 'c/n', the
    per-seed values of ``PER_SEED_LISTS`` joined by '/', and means of per-seed extremes renamed so."""
    groups = {}
    for r in rows:
        groups.setdefault(r["id"], []).append(r)
    out = []
    for pid, members in groups.items():
        first = members[0]
        row = {k: v for k, v in first.items()
               if k in NOT_SUMMED or not isinstance(v, (int, float)) or isinstance(v, bool)}
        row.update(row="summary", seed=None, run_dir=None, command=None, selection=first.get("selection"),
                   n_seeds=len(members))
        done = sum(r.get("status") == "done" for r in members)
        row["status"] = "done" if done == len(members) else f"{done}/{len(members)} done"
        flags = [r.get("converged") for r in members if r.get("converged") is not None]
        row["converged"] = f"{sum(bool(f) for f in flags)}/{len(members)}" if flags else None
        metrics = [k for r in members for k, v in r.items()
                   if k not in NOT_SUMMED and isinstance(v, (int, float)) and not isinstance(v, bool)]
        for k in dict.fromkeys(metrics):
            d = describe([r.get(k) for r in members])
            row[PER_SEED_MEANS.get(k, k)] = d["mean"]
            if k in PER_SEED_MEANS:
                row.pop(k, None)
            if k in HEADLINE:
                row[f"{k}_sd"], row[f"{k}_ci95"] = d["sd"], d["ci95"]
        for k in PER_SEED_LISTS:  # a per-seed value, not a mean: the list, seed 0 first
            if any(k in r for r in members):
                row[k] = "/".join("" if r.get(k) is None else f"{r.get(k):g}" for r in members)
        out.append(row)
    return out


def write_csv(path, rows):
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    for tail in ("run_dir", "command"):  # long columns last
        if tail in columns:
            columns.remove(tail)
            columns.append(tail)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv(row.get(k)) for k in columns})


def write_matrix_csv(path, ks, matrices, natural):
    """Each protocol's matrix (``matrices``: {protocol: rows}, strong first) under a header naming it."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        for which in [w for w in ("strong", "paper") if w in matrices]:
            writer.writerow([f"source k \\ target k ({which} transfer)"] + [f"{k:g}" for k in ks])
            writer.writerow(["natural"] + [_csv(a) for a in natural])
            for k, row in zip(ks, matrices[which]):
                writer.writerow([f"{k:g}"] + [_csv(a) for a in row])


def _csv(value):
    return f"{value:.6g}" if isinstance(value, float) else ("" if value is None else value)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.2f}"
    return "" if value is None else value


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(_fmt(c)) if c is not None else "–" for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_md(path, title, sections):
    """``sections``: list of (heading, text) pairs."""
    with open(path, "w") as fh:
        fh.write(f"# {title}\n\n")
        for heading, text in sections:
            fh.write(f"## {heading}\n\n{text}\n\n")
    return path


def rows_by(rows, **match):
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def curve(rows, metric):
    """Sorted (k, value) pairs of rows with a value for ``metric``."""
    pts = sorted((float(r["k"]), r[metric]) for r in rows if r.get(metric) is not None)
    return [k for k, _ in pts], [v for _, v in pts]


def curve_ci(rows, metric):
    """(ks, means, 95% half-widths, unsettled flags) of summary rows with a value for ``metric``;
    a point is unsettled when not every seed's run converged."""
    pts = sorted((float(r["k"]), r) for r in rows if r.get(metric) is not None)
    return ([k for k, _ in pts], [r[metric] for _, r in pts], [r.get(f"{metric}_ci95") for _, r in pts],
            [not settled(r) for _, r in pts])


def settled(row):
    """A summary row's runs all converged (or no rule applies)."""
    c = row.get("converged")
    if not isinstance(c, str) or "/" not in c:
        return True
    done, total = c.split("/")
    return done == total


def mean_ci(row, metric):
    """'mean ± ci95' of a summary row's metric ('–' if absent)."""
    if row is None or row.get(metric) is None:
        return "–"
    ci = row.get(f"{metric}_ci95")
    return f"{row[metric]:.1f}" if ci is None else f"{row[metric]:.1f} ± {ci:.1f}"


def first_value(rows, metric):
    for r in rows:
        if r.get(metric) is not None:
            return r[metric]
    return None


def result_of(point):
    return read_json(point.result_path()) if os.path.isfile(point.result_path()) else None
