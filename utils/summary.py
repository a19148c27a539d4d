"""``tickets.py summary [DIR]``: one table of every results.json under a folder.

One row per training run (main.py / train_full.py): arch, set, k, task, seed, epochs,
natural and robust accuracy of the last epoch (the numbers to report, see
docs/runs.md) and of the selected best epoch, the protocol that measured the
robust ones, the selection split and the run's folder. The table is printed as
markdown and written as ``summary.csv`` and ``summary.md`` (in DIR unless --out).
"""
import csv
import io
import json
import os

from utils.errors import UserError
from utils.run_guard import read_settings

COLUMNS = ("arch", "set", "k", "task", "seed", "epochs", "natural", "robust", "best_epoch", "best_natural",
           "best_robust", "protocol", "selection", "run")
NUMERIC = {"k", "seed", "epochs", "natural", "robust", "best_epoch", "best_natural", "best_robust"}


def add_parser(subparsers):
    """The ``summary`` subcommand of tickets.py."""
    p = subparsers.add_parser("summary", help="table of every results.json under a folder (CSV and markdown)",
                              description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("dir", nargs="?", default="runs", help="folder searched recursively (default: runs)")
    p.add_argument("--sort", default="run", choices=COLUMNS, help="column to sort by (default: run)")
    p.add_argument("--desc", action="store_true", help="sort in descending order")
    p.add_argument("--out", default=None, help="folder for summary.csv and summary.md (default: DIR)")
    p.set_defaults(func=main)
    return p


def protocol_text(p):
    """``pgd-20 eps 8/255 step 2/255, early stop, 1 restart, n=all`` from a results.json eval_protocol."""
    if not isinstance(p, dict) or not p.get("attack"):
        return "natural only"
    text = f"{p['attack']}" + (f"-{p['steps']}" if p.get("steps") else "") + f" eps {p.get('epsilon')}/255"
    if p.get("step_size") is not None:
        text += f" step {p['step_size']:g}/255"
    if p.get("early_stop") is not None:
        text += ", early stop" if p["early_stop"] else ", no early stop"
    if p.get("restarts") is not None:
        text += f", {p['restarts']} restart" + ("s" if p["restarts"] != 1 else "")
    if p.get("reduced"):  # AutoAttack below the reference's settings (--aa_steps, --aa_queries)
        text += f", REDUCED ({'; '.join(p['reduced'])})"
    return text + f", n={p.get('n_eval') or 'all'}"


def _number(value):
    return None if value is None else round(float(value), 2)


def row(path, root):
    """The table row of one results.json (``None`` if it is not a training run's)."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "epochs_done" not in data:
        return None
    folder = os.path.dirname(path)
    settings = os.path.join(folder, "settings.txt")
    settings = read_settings(settings) if os.path.isfile(settings) else {}
    seed = data["seed"] if data.get("seed") is not None else settings.get("seed")
    return {"arch": data.get("arch"), "set": data.get("set"), "k": data.get("prune_rate"), "task": data.get("task"),
            "seed": None if seed in (None, "None") else int(seed), "epochs": data.get("epochs_done"),
            "natural": _number(data.get("last_natural_acc1", data.get("natural_acc1"))),
            "robust": _number(data.get("last_robust_acc1", data.get("robust_acc1"))),
            "best_epoch": data.get("best_epoch"), "best_natural": _number(data.get("best_natural_acc1")),
            "best_robust": _number(data.get("best_robust_acc1")),
            "protocol": protocol_text(data.get("eval_protocol")),
            "selection": (data.get("selection") or "").split(" (")[0] or None,
            "run": os.path.relpath(folder, root)}


def collect(root):
    """Rows of every training run's results.json under ``root`` (eval/ records are not runs)."""
    if not os.path.isdir(root):
        raise UserError(f"'{root}' is not a folder")
    rows = []
    for top, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("eval", "checkpoints", "logs"))
        if "results.json" in files:
            r = row(os.path.join(top, "results.json"), root)
            if r is not None:
                rows.append(r)
    return rows


def sort_rows(rows, column, desc=False):
    """Sorted by ``column`` (numbers as numbers); empty cells last either way."""
    def key(r):
        return float(r[column]) if column in NUMERIC else str(r[column])
    filled = sorted((r for r in rows if r.get(column) is not None), key=key, reverse=desc)
    return filled + [r for r in rows if r.get(column) is None]


def _cell(v):
    return "" if v is None else str(v)


def to_csv(rows):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: _cell(r[c]) for c in COLUMNS})
    return buf.getvalue()


def to_markdown(rows):
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r[c]).replace("|", "\\|") for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(args, stdout):
    """Print the markdown table, write summary.csv and summary.md; returns the rows."""
    rows = sort_rows(collect(args.dir), args.sort, args.desc)
    if not rows:
        raise UserError(f"no results.json of a training run under '{args.dir}'")
    out = args.out or args.dir
    os.makedirs(out, exist_ok=True)
    table = to_markdown(rows)
    with open(os.path.join(out, "summary.csv"), "w", newline="") as fh:
        fh.write(to_csv(rows))
    with open(os.path.join(out, "summary.md"), "w") as fh:
        fh.write(table)
    stdout.write(table)
    stdout.write(f"{len(rows)} runs; written: {os.path.join(out, 'summary.csv')}, {os.path.join(out, 'summary.md')}\n")
    return rows
