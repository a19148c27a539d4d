"""The points of each figure, from its spec (see ``experiments/configs/``).

Stages are what SLURM runs as one job array each, in order: a stage's points need
only the points of earlier stages.

* existence: ``train`` (RST searches at every k and the dense adversarially trained
  network, per architecture; ablation panels add searches of the first architecture).
* property: ``train`` (searches, dense natural and adversarial networks), then
  ``finetune`` (``ft_inherit``/``ft_reinit`` of each searched ticket, and RTT searches
  with ``--pretrained`` the dense networks).
* application: ``train`` (tickets at every k in one random network, dense network),
  then ``transfer`` (the transfer matrix and the R2S evaluation of those tickets,
  read from a folder of links that ``figures.py --prepare transfer`` makes).

Every point is repeated per seed (``--seeds N``: seeds 0..N-1, each a different
random network, data order and attack start): seed s runs with ``--seed s`` under
``<out>/runs/seed=<s>/``, and its id ends in ``/seed=<s>``. The run folder is shared by
the three figures of one ``--out``, and runs are named by what they are (``rst``: a
search or its fine-tuning, ``dense``: dense adversarial training, ``dense-natural``,
``rtt-natural``/``rtt-adversarial``), not by figure: a run two figures need (the
cResNet18 searches and dense network of the digits profile) runs once. Two figures
that want the same run with other flags stop with the runner's settings-conflict error.
"""
import os
import re

from experiments.spec import merged, training_point, transfer_point
from utils.config import parse_config
from utils.errors import UserError

ABLATIONS = ("init", "granularity", "attack")
RST, DENSE = "rst", "dense"  # run names shared by every figure of a profile (see seed_points)
STAGES = {"existence": ("train", "autoattack"), "property": ("train", "finetune"), "application": ("train", "transfer"),
          "calibration": ("train",)}


def slug(text):
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(text)).strip("-").lower()


def _ks(spec):
    ks = spec.get("ks") or []
    if not ks or any(not 0 < float(k) <= 1 for k in ks):
        raise UserError(f"{spec['path']}: 'ks' must be a list of kept fractions in (0, 1]")
    return [float(k) for k in ks]


def _arch(spec):
    arch = spec.get("arch")
    if not isinstance(arch, dict) or "config" not in arch:
        raise UserError(f"{spec['path']}: 'arch' needs 'label', 'config' and optional 'flags'")
    return arch


def _same_as(config, flags, extra):
    """True if ``extra`` flags change nothing in the config resolved from ``config`` + ``flags``."""
    from experiments.spec import flag_args
    cfg = parse_config(["--config", config] + flag_args(flags))
    return all(str(getattr(cfg, k, None)) == str(v) for k, v in (extra or {}).items())


def existence_points(spec, log_dir, ablations=()):
    """Searches at every k and a dense network per architecture; ablations of the first one."""
    ks, points = _ks(spec), []
    archs = spec.get("archs") or []
    if not archs:
        raise UserError(f"{spec['path']}: 'archs' must list at least one architecture")
    for arch in archs:
        flags = merged(spec.get("flags"), arch.get("flags"))
        fields = {"panel": "main", "model": arch["label"]}
        for k in ks:
            points.append(training_point(f"search/{slug(arch['label'])}/k={k:g}", "train", arch["config"], flags,
                                         name=RST, log_dir=log_dir, k=k,
                                         fields=dict(fields, variant="RST")))
        points.append(training_point(f"dense/{slug(arch['label'])}", "train", arch["config"],
                                     merged(flags, spec.get("dense")), task="train_full", name=DENSE,
                                     log_dir=log_dir, fields=dict(fields, variant="dense AT")))
    for name in ablations:
        points += ablation_points(spec, log_dir, name, archs[0])
    return points


def autoattack_points(spec, log_dir, fig_dir, seed, trained):
    """The spec's ``autoattack: {ks, seeds, models, flags}``: for seeds below ``seeds``, the reference AutoAttack
    (test_trans.py --eval_attack autoattack, full test split) on each architecture's (of ``models``, default
    all) RSTs at ``ks``
    and its dense network, each checkpoint alone in a folder of one link (``link_autoattack``)."""
    table = spec.get("autoattack")
    if not table or seed >= int(table.get("seeds", 1)):
        return []
    ks, points = [float(k) for k in table.get("ks") or []], []
    for arch in spec.get("archs") or []:
        if table.get("models") and arch["label"] not in table["models"]:
            continue
        flags = merged(spec.get("flags"), arch.get("flags"), table.get("flags"), {"eval_attack": "autoattack"})
        for p in trained:
            if p.fields.get("model") != arch["label"] or p.fields.get("panel") != "main":
                continue
            k = p.fields["k"]
            if p.script == "main.py" and k not in ks:
                continue
            of = "dense AT" if p.script == "train_full.py" else "RST"
            source = os.path.join(aa_folder(fig_dir, seed, arch, k), ticket_file(arch, k))
            points.append(transfer_point(f"autoattack/{slug(arch['label'])}/{slug(of)}/k={k:g}", "autoattack",
                                         arch["config"], flags, name=f"autoattack-{slug(of)}", log_dir=log_dir,
                                         source=source, source_k=k, mode="single",
                                         fields={"panel": "autoattack", "model": arch["label"], "variant": of,
                                                 "k": k, "of": p.id}))
    return points


def aa_folder(fig_dir, seed, arch, k):
    return os.path.join(fig_dir, "autoattack", f"seed={seed}", f"{slug(arch['label'])}-k={k:g}")


def link_autoattack(spec, points):
    """The one-checkpoint folders of the autoattack points: a link to the trained point's model_best.pth."""
    trained = {(p.base, p.seed): p for p in points if p.stage == "train"}
    for p in points:
        if p.stage != "autoattack":
            continue
        target = os.path.join(trained[p.fields["of"], p.seed].run_dir(), "checkpoints", "model_best.pth")
        if not os.path.isfile(target):
            raise UserError(f"{p.fields['of']} is not finished: {target} is missing (run the train stage first)")
        link = p.argv[p.argv.index("--pretrained") + 1]
        _link(target, link)


def _link(target, link):
    folder = os.path.dirname(link)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(link)}.{os.getpid()}")
    os.symlink(os.path.relpath(target, folder), tmp)
    os.replace(tmp, link)  # atomic: array tasks may run this at once


def ablation_points(spec, log_dir, name, arch):
    """One panel: the first architecture's searches, one variant per curve."""
    table = spec.get("ablations") or {}
    if name not in table:
        raise UserError(f"{spec['path']} defines no ablation '{name}' (defined: {', '.join(table) or 'none'})")
    ablation, points = table[name], []
    base = merged(spec.get("flags"), arch.get("flags"))
    for variant in ablation.get("variants", []):
        config = variant.get("config", arch["config"])
        extra = variant.get("flags") or {}
        same = _same_as(config, base, extra)  # e.g. element-wise masks = the main panel's runs
        run_name = RST if same else f"{RST}-{name}-{slug(variant['label'])}"
        flags = base if same else merged(base, extra)
        for k in [float(k) for k in ablation.get("ks") or _ks(spec)]:
            points.append(training_point(f"{name}/{slug(variant['label'])}/k={k:g}", "train", config, flags,
                                         name=run_name, log_dir=log_dir, k=k,
                                         fields={"panel": name, "model": arch["label"], "variant": variant["label"]}))
    return points


def property_points(spec, log_dir):
    """RST, its fine-tuned versions, and RTTs from a natural and an adversarial dense network."""
    ks, arch, points = _ks(spec), _arch(spec), []
    flags = merged(spec.get("flags"), arch.get("flags"))
    label = arch["label"]
    for k in ks:
        points.append(training_point(f"search/k={k:g}", "train", arch["config"], flags, name=RST,
                                     log_dir=log_dir, k=k, fields={"model": label, "variant": "RST"}))
    dense = {}
    for kind in ("natural", "adversarial"):
        p = training_point(f"dense/{kind}", "train", arch["config"], merged(flags, spec.get(f"dense_{kind}")),
                           task="train_full", name=DENSE if kind == "adversarial" else f"{DENSE}-{kind}",
                           log_dir=log_dir,
                           fields={"model": label, "variant": f"dense ({kind})"})
        dense[kind] = p
        points.append(p)
    for k in ks:
        ticket = os.path.join(points[ks.index(k)].run_dir(), "checkpoints", "model_best.pth")
        for task in ("ft_inherit", "ft_reinit"):
            points.append(training_point(f"{task}/k={k:g}", "finetune", arch["config"],
                                         merged(flags, spec.get("finetune")), task=task, name=RST,
                                         log_dir=log_dir, k=k, pretrained=ticket,
                                         fields={"model": label, "variant": task}))
        for kind, p in dense.items():
            weights = os.path.join(p.run_dir(), "checkpoints", "model_best.pth")
            points.append(training_point(f"rtt-{kind}/k={k:g}", "finetune", arch["config"],
                                         merged(flags, spec.get("rtt")), name=f"rtt-{kind}",
                                         log_dir=log_dir, k=k, pretrained=weights,
                                         fields={"model": label, "variant": f"RTT ({kind})"}))
    return points


def ticket_folder(fig_dir, seed):
    return os.path.join(fig_dir, "tickets", f"seed={seed}")


def ticket_file(arch, k):
    name = re.split(r"[\s,(]+", arch["label"])[0]  # "cResNet18, width 0.25" -> cResNet18
    return f"{name}_{k:g}.pth"


def application_points(spec, log_dir, tickets):
    """Tickets of one random network (same seed) at every k, a dense network, then transfer and R2S
    (``tickets``: the folder of links to the tickets)."""
    ks, arch, points = _ks(spec), _arch(spec), []
    flags = merged(spec.get("flags"), arch.get("flags"))
    if "seed" not in flags:
        raise UserError(f"{spec['path']}: 'flags' must fix 'seed' (tickets of ONE random network)")
    for k in ks:
        points.append(training_point(f"search/k={k:g}", "train", arch["config"], flags, name=RST,
                                     log_dir=log_dir, k=k, fields={"model": arch["label"], "variant": "RST"}))
    points.append(training_point("dense", "train", arch["config"], merged(flags, spec.get("dense")),
                                 task="train_full", name=DENSE, log_dir=log_dir,
                                 fields={"model": arch["label"], "variant": "dense AT"}))
    source = os.path.join(tickets, ticket_file(arch, min(ks)))
    for mode, extra in (("matrix", spec.get("transfer")), ("r2s", spec.get("r2s"))):
        points.append(transfer_point(mode, "transfer", arch["config"], merged(flags, extra),
                                     name=f"application-{mode}", log_dir=log_dir, source=source,
                                     source_k=min(ks), mode=mode, fields={"model": arch["label"], "variant": mode}))
    return points


def link_tickets(spec, points, fig_dir):
    """``<figure dir>/tickets/seed=<s>/<arch>_<k>.pth``: links to each finished search's model_best.pth.
    Links of k no longer in the spec are removed (test_trans.py reads every ticket in the folder)."""
    arch = _arch(spec)
    wanted = {}
    for p in points:
        if p.script == "main.py" and p.stage == "train":
            wanted.setdefault(ticket_folder(fig_dir, p.seed), set()).add(ticket_file(arch, p.fields["k"]))
    for folder, names in wanted.items():
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if name.endswith(".pth") and name not in names and os.path.islink(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name))
    for p in points:
        if p.script != "main.py" or p.stage != "train":
            continue
        folder = ticket_folder(fig_dir, p.seed)
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(p.run_dir(), "checkpoints", "model_best.pth")
        if not os.path.isfile(target):
            raise UserError(f"ticket {p.id} is not finished: {target} is missing (run the train stage first)")
        _link(target, os.path.join(folder, ticket_file(arch, p.fields["k"])))
    return folder


def seed_points(figure, spec, fig_dir, seed, ablations=()):
    """The figure's points for one seed: ``--seed seed``, runs under ``runs/seed=<seed>/``."""
    log_dir = os.path.join(os.path.dirname(fig_dir), "runs", f"seed={seed}")
    spec = dict(spec, flags=dict(spec.get("flags") or {}, seed=seed))
    if figure == "existence":
        points = existence_points(spec, log_dir, ablations)
        points += autoattack_points(spec, log_dir, fig_dir, seed, points)
    elif ablations:
        raise UserError("--ablation applies to the existence figure only")
    elif figure == "property":
        points = property_points(spec, log_dir)
    elif figure == "calibration":
        from experiments.calibration import calibration_points
        points = calibration_points(spec, log_dir)
    else:
        points = application_points(spec, log_dir, ticket_folder(fig_dir, seed))
    for p in points:
        p.base, p.seed, p.threads = p.id, seed, spec.get("threads")
        p.id = f"{p.id}/seed={seed}"
        p.fields = dict(p.fields, seed=seed)
    return points


def figure_points(figure, spec, fig_dir, ablations=(), seeds=(0,)):
    """Every point of the figure, seed by seed (all of seed 0's, then seed 1's, ...)."""
    return [p for seed in seeds for p in seed_points(figure, spec, fig_dir, seed, ablations)]
