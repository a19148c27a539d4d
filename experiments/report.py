"""Per-figure outputs: ``<figure>.csv``, ``<figure>.md`` and ``<figure>.png`` in the figure folder.

Curves show, per point, the best epoch's accuracies (the epoch with the highest
PGD-20 accuracy on the evaluation split: the paper's protocol); the CSV also has
the last validation's. The paper's values are drawn faintly when the spec sets
``paper_overlay`` (the cifar10 profile).
"""
import os

from experiments import collect, draw, paper
from experiments.collect import curve, first_value, md_table, rows_by

ROBUST, NATURAL = "best_acc1", "natural_acc1_at_best_robustness"


def protocol(spec):
    """One line: the evaluation protocol of the figure's runs."""
    flags = spec.get("flags") or {}
    n_eval = flags.get("n_eval")
    return (f"robust = PGD-20 (eps {flags.get('epsilon', 8):g}/255, step 2/255, 1 random start, early stop), "
            f"{'all' if n_eval is None else n_eval} evaluation images of {flags.get('set', '?')}; "
            "accuracies (%) at the epoch with the best PGD-20 accuracy (the paper's protocol)")


def write_outputs(figure, spec, rows, fig_dir, sections, png_writer):
    out = {"csv": os.path.join(fig_dir, f"{figure}.csv"), "md": os.path.join(fig_dir, f"{figure}.md"),
           "png": os.path.join(fig_dir, f"{figure}.png")}
    collect.write_csv(out["csv"], rows)
    collect.write_md(out["md"], f"{figure} ({spec['path']})", [("Protocol", protocol(spec))] + sections)
    png_writer(out["png"])
    return out


def existence(spec, points, fig_dir):
    rows = [collect.point_row(p, "existence") for p in points]
    panels, sections = [], []
    for label in dict.fromkeys(r["model"] for r in rows_by(rows, panel="main")):
        mine = rows_by(rows, panel="main", model=label)
        rst, dense = rows_by(mine, variant="RST"), rows_by(mine, variant="dense AT")
        panel = {"title": label, "curves": [("RST robust", *curve(rst, ROBUST), {"color": "C0"}),
                                            ("RST natural", *curve(rst, NATURAL), {"color": "C1", "linestyle": "-."})],
                 "hlines": [("dense AT robust", first_value(dense, ROBUST), {"color": "C0"}),
                            ("dense AT natural", first_value(dense, NATURAL), {"color": "C1"})]}
        if spec.get("paper_overlay"):
            panel["faint"] = existence_paper(str(mine[0]["arch"]))
        panels.append(panel)
        table = [(f"{r['k']:g}", r.get(NATURAL), r.get(ROBUST)) for r in rst]
        table += [("dense AT", first_value(dense, NATURAL), first_value(dense, ROBUST))]
        sections.append((label, md_table(["k", "natural", "PGD-20"], table)))
    for name in [n for n in dict.fromkeys(r["panel"] for r in rows) if n != "main"]:
        mine = rows_by(rows, panel=name)
        variants = list(dict.fromkeys(r["variant"] for r in mine))
        panels.append({"title": f"ablation: {name} ({mine[0]['model']})", "ylabel": "PGD-20 accuracy (%)",
                       "curves": [(v, *curve(rows_by(mine, variant=v), ROBUST), {"color": f"C{i}"})
                                  for i, v in enumerate(variants)]})
        ks = sorted({r["k"] for r in mine})
        table = [[f"{k:g}"] + [first_value(rows_by(mine, variant=v, k=k), ROBUST) for v in variants] for k in ks]
        sections.append((f"ablation: {name} (PGD-20)", md_table(["k"] + variants, table)))
    return write_outputs("existence", spec, rows, fig_dir, sections,
                         lambda path: draw.k_panels(path, panels, protocol(spec)))


def existence_paper(arch):
    faint = []
    if arch in paper.RST_ROBUST:
        ks = sorted(paper.RST_ROBUST[arch])
        faint.append(("curve", "paper RST robust", ks, [paper.RST_ROBUST[arch][k] for k in ks], "C0"))
    if arch in paper.RST_NATURAL:
        ks = sorted(paper.RST_NATURAL[arch])
        faint.append(("curve", "paper RST natural", ks, [paper.RST_NATURAL[arch][k] for k in ks], "C1"))
    if arch in paper.DENSE:
        faint += [("hline", "paper dense robust", paper.DENSE[arch]["robust"], "C0"),
                  ("hline", "paper dense natural", paper.DENSE[arch]["natural"], "C1")]
    return faint


PROPERTY_CURVES = (("a", "RST", "RST"), ("a", "ft_inherit", "fine-tuned, inherited weights"),
                   ("a", "ft_reinit", "fine-tuned, re-initialised weights"), ("b", "RST", "RST"),
                   ("b", "RTT (natural)", "RTT from a naturally trained net"),
                   ("b", "RTT (adversarial)", "RTT from an adversarially trained net"))


def property_(spec, points, fig_dir):
    rows = [collect.point_row(p, "property") for p in points]
    dense = first_value(rows_by(rows, variant="dense (adversarial)"), ROBUST)
    panels = {}
    for panel, variant, label in PROPERTY_CURVES:
        panels.setdefault(panel, {"curves": [], "ylabel": "PGD-20 accuracy (%)",
                                  "hlines": [("dense AT robust", dense, {"color": "gray"})]})
        i = len(panels[panel]["curves"])
        panels[panel]["curves"].append((label, *curve(rows_by(rows, variant=variant), ROBUST), {"color": f"C{i}"}))
    panels["a"]["title"] = f"(a) fine-tuning RSTs ({spec['arch']['label']})"
    panels["b"]["title"] = f"(b) RTTs vs RSTs ({spec['arch']['label']})"
    variants = list(dict.fromkeys(v for _, v, _ in PROPERTY_CURVES))
    ks = sorted({r["k"] for r in rows_by(rows, variant="RST")})
    sections = []
    for metric, title in ((ROBUST, "PGD-20 accuracy"), (NATURAL, "natural accuracy")):
        table = [[f"{k:g}"] + [first_value(rows_by(rows, variant=v, k=k), metric) for v in variants] for k in ks]
        sections.append((title, md_table(["k"] + variants, table)))
    table = [(r["variant"], r.get("natural_acc1"), r.get("robust_acc1")) for r in rows if r["task"] == "train_full"]
    sections.append(("dense networks (last epoch)", md_table(["network", "natural", "PGD-20"], table)))
    return write_outputs("property", spec, rows, fig_dir, sections,
                         lambda path: draw.k_panels(path, [panels["a"], panels["b"]], protocol(spec)))


def application(spec, points, fig_dir):
    rows = [collect.point_row(p, "application") for p in points]
    matrix_point = next(p for p in points if p.id == "matrix")
    data = collect.result_of(matrix_point) if rows_by(rows, id="matrix")[0]["status"] == "done" else None
    matrix, sections = None, []
    if data:
        which, ks, m = collect.matrix_of(data)
        collect.write_matrix_csv(os.path.join(fig_dir, "application_matrix.csv"), data)
        title = (f"target accuracy (%) under PGD-20 examples of the source\n({which} protocol"
                 f"{'' if which == 'strong' else ': early-stopped, as the paper'}; diagonal = white-box)")
        matrix = (ks, m, data.get("natural_acc1", [None] * len(ks)), title)
        for protocol_name in ("strong", "paper"):
            _, _, rows_p = collect.matrix_of(data, protocol_name)
            sections.append((f"transfer matrix ({protocol_name})",
                             md_table(["source \\ target"] + [f"{k:g}" for k in ks],
                                      [["natural"] + data.get("natural_acc1", [])]
                                      + [[f"{k:g}"] + r for k, r in zip(ks, rows_p)])))
    dense = rows_by(rows, variant="dense AT")[0]
    r2s = rows_by(rows, variant="r2s")[0]
    groups = [("dense AT", [("natural", dense.get(NATURAL)), ("PGD-20 (white-box)", dense.get(ROBUST))]),
              ("R2S", [("natural", r2s.get("r2s_natural")),
                       ("PGD-20 transferred (paper)", r2s.get("r2s_transfer_paper")),
                       ("PGD-20 transferred (strong)", r2s.get("r2s_transfer_strong")),
                       ("worst case (adaptive)", r2s.get("r2s_worst_case"))])]
    table = [[g] + [v for _, v in items] + [None] * (4 - len(items)) for g, items in groups]
    faint = None
    if spec.get("paper_overlay") and matrix_point.config().arch in paper.R2S:
        ref = paper.R2S[matrix_point.config().arch]
        arch_dense = paper.DENSE.get(matrix_point.config().arch, {})
        faint = {"dense AT": [("natural", arch_dense.get("natural")), ("PGD-20 (white-box)", arch_dense.get("robust"))],
                 "R2S": [("natural", ref["natural"]), ("PGD-20 transferred (paper)", ref["transfer"])]}
        table += [["paper " + g] + [v for _, v in items] + [None] * (4 - len(items)) for g, items in faint.items()]
    if spec.get("paper_overlay"):
        sections.append(("paper", f"transfer between tickets of different k: {paper.TRANSFER['offdiag'][0]:g}-"
                                  f"{paper.TRANSFER['offdiag'][1]:g}% robust accuracy off the diagonal vs "
                                  f"{paper.TRANSFER['diag'][0]:g}-{paper.TRANSFER['diag'][1]:g}% on it "
                                  f"({paper.SOURCE})"))
    sections.insert(0, ("R2S vs dense adversarial training",
                        md_table(["model", "natural", "PGD-20 (white-box / transferred, paper protocol)",
                                  "PGD-20 transferred (strong)", "worst case (strongest adaptive)"], table)))
    return write_outputs("application", spec, rows, fig_dir, sections,
                         lambda path: draw.application_figure(path, matrix, groups, faint, protocol(spec)))


REPORTS = {"existence": existence, "property": property_, "application": application}
