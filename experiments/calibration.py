"""Calibrating the threat model to the data: dense adversarial training at a list of radii.

``figures.py calibration --profile P`` trains, per architecture, radius and seed, a dense
network with the profile's flags at ``--epsilon r``, the PGD training step and the evaluation
PGD-20 step both ``r x`` the spec's step fractions (``steps: {train: 0.25, eval: 0.25}``: eps/4),
and writes ``calibration.csv`` (per-seed and summary rows), ``calibration.md``,
``calibration.png`` (natural and PGD-20 accuracy against the radius, the paper's CIFAR-10 drop
drawn as the target) and ``calibration.json`` with the radius its rule picks.

The rule (``rule: {drop: [lo, hi]}``): the smallest radius at which dense adversarial
training's natural-to-PGD-20 drop, the mean over seeds and architectures, lies within
[lo, hi] points. The paper's drop (``paper:``, dense ResNet18 on CIFAR-10 at 8/255) is
shown beside it: 81.73 natural, 50.19 PGD-20, a drop of 31.5 points.
"""
import json
import os

from experiments import collect, draw
from experiments.collect import md_table, rows_by
from experiments.points import slug
from experiments.rules import drop_of
from experiments.spec import merged, training_point
from experiments.stats import fmt
from utils.errors import UserError

NATURAL, ROBUST = "best_natural_acc1", "best_robust_acc1"
DEFAULT_STEPS = {"train": 0.25, "eval": 0.25}


def _radii(spec):
    radii = spec.get("radii") or []
    if not radii or any(not 0 < float(r) <= 255 for r in radii):
        raise UserError(f"{spec['path']}: 'radii' must list radii in (0, 255] (0-255 pixel units)")
    return [float(r) for r in radii]


def _steps(spec):
    steps = dict(DEFAULT_STEPS, **(spec.get("steps") or {}))
    if set(steps) != set(DEFAULT_STEPS) or any(not 0 < float(v) <= 1 for v in steps.values()):
        raise UserError(f"{spec['path']}: 'steps' takes train and eval, fractions of the radius in (0, 1]")
    return steps


def rule_of(spec):
    """(lo, hi): the drop (points) the chosen radius must give."""
    drop = (spec.get("rule") or {}).get("drop")
    if not isinstance(drop, (list, tuple)) or len(drop) != 2 or not 0 <= drop[0] < drop[1] <= 100:
        raise UserError(f"{spec['path']}: 'rule' must be {{drop: [lo, hi]}} with 0 <= lo < hi <= 100 (points)")
    return float(drop[0]), float(drop[1])


def calibration_points(spec, log_dir):
    """A dense adversarially trained network per architecture and radius (``train_full.py``)."""
    archs, steps, points = spec.get("archs") or [], _steps(spec), []
    if not archs:
        raise UserError(f"{spec['path']}: 'archs' must list at least one architecture")
    for arch in archs:
        for r in _radii(spec):
            flags = merged(spec.get("flags"), arch.get("flags"),
                           {"epsilon": r, "train_step": round(r * steps["train"], 6),
                            "eval_step": round(r * steps["eval"], 6)})
            points.append(training_point(f"dense/{slug(arch['label'])}/eps={r:g}", "train", arch["config"], flags,
                                         task="train_full", name=f"dense-eps{r:g}", log_dir=log_dir,
                                         fields={"model": arch["label"], "variant": "dense AT", "radius": r}))
    return points


def drops(summary):
    """{radius: {'per_arch': {label: drop}, 'mean': mean drop over architectures}} (points)."""
    out = {}
    for row in summary:
        nat, rob = row.get(NATURAL), row.get(ROBUST)
        if nat is None or rob is None:
            continue
        entry = out.setdefault(row["radius"], {"per_arch": {}})
        entry["per_arch"][row["model"]] = nat - rob
    for entry in out.values():
        entry["mean"] = sum(entry["per_arch"].values()) / len(entry["per_arch"])
    return dict(sorted(out.items()))


def choose_radius(summary, rule, archs):
    """The smallest radius whose mean drop lies in ``rule`` (lo, hi), measured on every architecture;
    None if no radius does."""
    for radius, entry in drops(summary).items():
        if len(entry["per_arch"]) == archs and rule[0] <= entry["mean"] <= rule[1]:
            return radius
    return None


def seed_drops(rows, radius, model):
    """describe() of the per-seed drops of one architecture at one radius."""
    mine = rows_by(rows, radius=radius, model=model)
    return drop_of({r["seed"]: r.get(NATURAL) for r in mine}, {r["seed"]: r.get(ROBUST) for r in mine})


def report(spec, points, fig_dir):
    """calibration.csv, .md, .png and .json in ``fig_dir``; returns their paths and the choice."""
    rows = [collect.point_row(p, "calibration", spec.get("convergence")) for p in points]
    summary = collect.summary_rows(rows)
    rule, paper = rule_of(spec), spec.get("paper") or {}
    archs = list(dict.fromkeys(r["model"] for r in summary))
    chosen = choose_radius(summary, rule, len(archs))
    out = {k: os.path.join(fig_dir, f"calibration.{k}") for k in ("csv", "md", "png", "json")}
    os.makedirs(fig_dir, exist_ok=True)
    collect.write_csv(out["csv"], rows + summary)
    table = []
    for r in summary:
        d = seed_drops(rows, r["radius"], r["model"])
        table.append((f"{r['radius']:g}", r["model"], collect.mean_ci(r, NATURAL), collect.mean_ci(r, ROBUST),
                      fmt(d), r.get("converged")))
    paper_drop = _paper_drop(paper)
    verdict = (f"chosen radius: {chosen:g}/255 (the smallest whose mean drop over {len(archs)} architectures is in "
               f"{rule[0]:g}-{rule[1]:g} points)" if chosen is not None else
               f"no radius gives a mean drop in {rule[0]:g}-{rule[1]:g} points")
    head = (f"Dense adversarial training per radius; PGD training step {_steps(spec)['train']:g} x eps, PGD-20 "
            f"evaluation step {_steps(spec)['eval']:g} x eps; {len(spec.get('seed_list') or [0])} seed(s). "
            f"Paper target (dense ResNet18, CIFAR-10, 8/255): {paper.get('natural', '?')} natural, "
            f"{paper.get('robust', '?')} PGD-20, a drop of {paper_drop} points. Rule: {verdict}.")
    collect.write_md(out["md"], f"calibration ({spec['path']})",
                     [("Rule and result", head),
                      ("Accuracy per radius (mean ± 95% interval over seeds)",
                       md_table(["eps (/255)", "model", "natural", "PGD-20", "drop (points)", "converged"], table))])
    with open(out["json"], "w") as fh:
        json.dump({"rule": {"drop": list(rule), "text": verdict}, "chosen_radius": chosen,
                   "paper": dict(paper, drop=paper_drop), "steps": _steps(spec),
                   "drops": {f"{k:g}": v for k, v in drops(summary).items()}}, fh, indent=1)
    draw.calibration_figure(out["png"], _panels(summary, archs), rule, paper, chosen,
                            "Calibrating the radius: dense adversarial training", head)
    out["chosen"], out["convergence"] = chosen, verdict
    return out


def _paper_drop(paper):
    if paper.get("natural") is None or paper.get("robust") is None:
        return None
    return round(paper["natural"] - paper["robust"], 2)


def _panels(summary, archs):
    """Per architecture: radii, natural and PGD-20 means and their 95% half-widths."""
    out = []
    for label in archs:
        mine = sorted(rows_by(summary, model=label), key=lambda r: r["radius"])
        out.append({"title": label, "radii": [r["radius"] for r in mine],
                    "natural": [r.get(NATURAL) for r in mine], "natural_ci": [r.get(f"{NATURAL}_ci95") for r in mine],
                    "robust": [r.get(ROBUST) for r in mine], "robust_ci": [r.get(f"{ROBUST}_ci95") for r in mine]})
    return out
