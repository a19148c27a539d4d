"""Per-figure outputs in the figure folder: ``<figure>.csv`` (a row per point and seed, then a
summary row per point), ``<figure>.md``, ``<figure>.png`` and ``claims.md``/``claims.json``.

Curves show, per point, the mean over seeds of the selected epoch's test-split accuracies
(``best_natural_acc1``/``best_robust_acc1``: the epoch with the highest PGD-20 accuracy on
the selection split, a hold-out of the training set in the digits profile), with 95%
intervals as error bars; points whose runs did not all converge are ringed in red. The
paper's values are drawn faintly when the spec sets ``paper_overlay`` (the cifar10 profile).
"""
import os

from experiments import claims, collect, draw, paper
from experiments.collect import curve_ci, mean_ci, md_table, rows_by
from experiments.convergence import describe_rule, describe_share, share

ROBUST, NATURAL = "best_robust_acc1", "best_natural_acc1"


def protocol(spec):
    """One line: the evaluation protocol of the figure's runs."""
    flags = spec.get("flags") or {}
    n_eval = flags.get("n_eval")
    split = (f"a {flags['val_split']:g} hold-out of the training set" if flags.get("val_split")
             else "the test split itself (the paper's protocol)")
    evaluated = {(spec.get(part) or {}).get("n_eval") for part in ("transfer", "r2s")} - {None}
    transfer = f" (transfer and R2S: the first {min(evaluated)})" if evaluated else ""
    return (f"robust = PGD-20 (eps {flags.get('epsilon', 8):g}/255, step {flags.get('eval_step', 2):g}/255, 1 random "
            f"start, early stop), "
            f"{'all' if n_eval is None else n_eval} test images of {flags.get('set', '?')}{transfer}; accuracies "
            f"(%) on the test split at the epoch with the best PGD-20 accuracy on {split}")


def caption(spec):
    seeds = len(spec.get("seed_list") or [0])
    return (f"profile {spec.get('profile')} ({spec['path']}); {seeds} seed(s): mean"
            f"{', bars = 95% interval' if seeds > 1 else ''}; {protocol(spec)}")


def gather(figure, spec, points):
    """(per-seed rows, summary rows)."""
    per_seed = [collect.point_row(p, figure, spec.get("convergence")) for p in points]
    return per_seed, collect.summary_rows(per_seed)


def write_outputs(figure, spec, rows, summary, fig_dir, sections, png_writer):
    out = {"csv": os.path.join(fig_dir, f"{figure}.csv"), "md": os.path.join(fig_dir, f"{figure}.md"),
           "png": os.path.join(fig_dir, f"{figure}.png")}
    collect.write_csv(out["csv"], rows + summary)
    out["convergence"] = describe_share(share(rows))
    head = [("Protocol", protocol(spec)), ("Seeds and convergence",
            f"{len(spec.get('seed_list') or [0])} seed(s) per point; tables show mean ± 95% interval. "
            f"{describe_rule(spec.get('convergence'))}; 'converged' counts the seeds that did. "
            f"{out['convergence']}.")]
    collect.write_md(out["md"], f"{figure} ({spec['path']})", head + sections)
    png_writer(out["png"])
    out["claims"] = claims.write_claims(figure, rows + summary, fig_dir, caption(spec))
    return out


def _hline(rows, metric, style):
    row = rows[0] if rows else None
    value = row.get(metric) if row else None
    return value, dict(style, band=row.get(f"{metric}_ci95") if row else None)


def existence(spec, points, fig_dir):
    rows, summary = gather("existence", spec, points)
    panels, sections = [], []
    for label in dict.fromkeys(r["model"] for r in rows_by(summary, panel="main")):
        mine = rows_by(summary, panel="main", model=label)
        rst, dense = rows_by(mine, variant="RST"), rows_by(mine, variant="dense AT")
        rob, nat = curve_ci(rst, ROBUST), curve_ci(rst, NATURAL)
        panel = {"title": label,
                 "curves": [("RST robust (PGD-20)", *rob[:2], {"color": "C0", "yerr": rob[2], "unsettled": rob[3]}),
                            ("RST natural", *nat[:2], {"color": "C1", "linestyle": "-.", "yerr": nat[2],
                                                      "unsettled": nat[3]})],
                 "hlines": [("dense AT robust", *_hline(dense, ROBUST, {"color": "C0"})),
                            ("dense AT natural", *_hline(dense, NATURAL, {"color": "C1"}))]}
        if spec.get("paper_overlay"):
            panel["faint"] = existence_paper(str(mine[0]["arch"]))
        panels.append(panel)
        table = [(f"{r['k']:g}", mean_ci(r, NATURAL), mean_ci(r, ROBUST), r.get("converged")) for r in rst]
        table += [("dense AT", mean_ci(d, NATURAL), mean_ci(d, ROBUST), d.get("converged")) for d in dense]
        sections.append((label, md_table(["k", "natural", "PGD-20", "converged"], table)))
    aa = [r for r in rows if r.get("panel") == "autoattack"]
    if aa:
        sections.append(("reference AutoAttack next to PGD-20 (the same checkpoint: seed and k)",
                         md_table(["model", "network", "k", "seed", "images", "natural", "PGD-20", "AutoAttack",
                                   "PGD-20 − AutoAttack", "protocol"], [_aa_row(r, rows) for r in aa])))
    for name in [n for n in dict.fromkeys(r["panel"] for r in summary) if n not in ("main", "autoattack")]:
        mine = rows_by(summary, panel=name)
        variants = list(dict.fromkeys(r["variant"] for r in mine))
        curves = []
        for i, v in enumerate(variants):
            c = curve_ci(rows_by(mine, variant=v), ROBUST)
            curves.append((v, *c[:2], {"color": f"C{i}", "yerr": c[2], "unsettled": c[3]}))
        panels.append({"title": f"ablation: {name}, {mine[0]['model']}", "ylabel": "PGD-20 accuracy (%)",
                       "curves": curves})
        ks = sorted({r["k"] for r in mine})
        table = [[f"{k:g}"] + [mean_ci(next(iter(rows_by(mine, variant=v, k=k)), None), ROBUST) for v in variants]
                 for k in ks]
        sections.append((f"ablation: {name} (PGD-20)", md_table(["k"] + variants, table)))
    return write_outputs("existence", spec, rows, summary, fig_dir, sections,
                         lambda path: draw.k_panels(path, panels, "Existence of robust scratch tickets",
                                                    caption(spec)))


def _aa_row(r, rows):
    """One AutoAttack row beside the PGD-20 accuracy of the run it evaluated (same seed, test split)."""
    main = next(iter(rows_by(rows, panel="main", model=r["model"], variant=r["variant"], k=r["k"], seed=r["seed"])),
                {})
    pgd, aa = main.get(ROBUST), r.get("aa_robust_acc1")
    reduced = "" if r.get("aa_steps") in (None, 100) else f", REDUCED: {r.get('aa_steps')} steps"
    return (r["model"], r["variant"], f"{r['k']:g}", r["seed"], r.get("aa_n_eval") or "all",
            r.get("aa_natural_acc1"), pgd, aa, None if None in (pgd, aa) else pgd - aa,
            f"{r.get('aa_version')}{reduced}")


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


# one colour per method in every panel (and dense AT grey)
VARIANT_COLORS = {"RST": "C0", "ft_inherit": "C1", "ft_reinit": "C2", "RTT (natural)": "C3", "RTT (adversarial)": "C4"}


def property_(spec, points, fig_dir):
    rows, summary = gather("property", spec, points)
    dense = _hline(rows_by(summary, variant="dense (adversarial)"), ROBUST, {"color": "gray"})
    panels = {}
    for panel, variant, label in PROPERTY_CURVES:
        panels.setdefault(panel, {"curves": [], "ylabel": "PGD-20 accuracy (%)",
                                  "hlines": [("dense AT robust", *dense)]})
        c = curve_ci(rows_by(summary, variant=variant), ROBUST)
        panels[panel]["curves"].append((label, *c[:2], {"color": VARIANT_COLORS[variant], "yerr": c[2],
                                                        "unsettled": c[3]}))
    panels["a"]["title"] = f"(a) fine-tuning RSTs: {spec['arch']['label']}"
    panels["b"]["title"] = f"(b) RTTs vs RSTs: {spec['arch']['label']}"
    variants = list(dict.fromkeys(v for _, v, _ in PROPERTY_CURVES))
    ks = sorted({r["k"] for r in rows_by(summary, variant="RST")})
    sections = []
    for metric, title in ((ROBUST, "PGD-20 accuracy"), (NATURAL, "natural accuracy")):
        table = [[f"{k:g}"] + [mean_ci(next(iter(rows_by(summary, variant=v, k=k)), None), metric) for v in variants]
                 for k in ks]
        sections.append((title, md_table(["k"] + variants, table)))
    table = [(r["variant"], mean_ci(r, NATURAL), mean_ci(r, ROBUST), r.get("converged"))
             for r in summary if r["task"] == "train_full"]
    sections.append(("dense networks (selected epoch)", md_table(["network", "natural", "PGD-20", "converged"], table)))
    conv = [(r["variant"], f"{r['k']:g}", r.get("converged")) for r in summary if r["task"] != "train_full"]
    sections.append(("converged seeds per point", md_table(["variant", "k", "converged"], conv)))
    return write_outputs("property", spec, rows, summary, fig_dir, sections,
                         lambda path: draw.k_panels(path, [panels["a"], panels["b"]], "Properties of RSTs",
                                                    caption(spec)))


def mean_matrices(points):
    """Element-wise mean over seeds of each protocol's transfer matrix: (ks, {protocol: rows}, natural, n)."""
    datas = [collect.result_of(p) for p in points if p.base == "matrix"]
    datas = [d for d in datas if d]
    if not datas:
        return None
    ks = collect.matrix_of(datas[0])[1]
    out = {}
    for which in ("strong", "paper"):
        mats = [collect.matrix_of(d, which)[2] for d in datas if collect.matrix_of(d, which)[0] == which]
        if mats:
            out[which] = [[sum(m[i][j] for m in mats) / len(mats) for j in range(len(ks))] for i in range(len(ks))]
    natural = [sum(d["natural_acc1"][j] for d in datas) / len(datas) for j in range(len(ks))]
    return ks, out, natural, len(datas)


def application(spec, points, fig_dir):
    rows, summary = gather("application", spec, points)
    means, sections, matrix = mean_matrices(points), [], None
    if means:
        ks, mats, natural, n = means
        which = "strong" if "strong" in mats else "paper"
        collect.write_matrix_csv(os.path.join(fig_dir, "application_matrix.csv"), ks, mats, natural)
        matrix = (ks, mats[which], natural, f"target accuracy (%) under PGD-20 examples of the source, mean of {n} "
                  f"seed(s); {which} protocol{'' if which == 'strong' else ', early-stopped as the paper'}; "
                  "diagonal = white-box")
        for name, rows_p in mats.items():
            sections.append((f"transfer matrix ({name}), mean of {n} seed(s)",
                             md_table(["source \\ target"] + [f"{k:g}" for k in ks],
                                      [["natural"] + natural] + [[f"{k:g}"] + r for k, r in zip(ks, rows_p)])))
    dense = next(iter(rows_by(summary, variant="dense AT")), {})
    r2s = next(iter(rows_by(summary, variant="r2s")), {})
    n_src = len({r["k"] for r in rows_by(summary, variant="RST")})
    paper_label = f"PGD-20 transferred (paper), minimum over {n_src} source tickets"
    groups = [("dense AT", [("natural", NATURAL, dense), ("PGD-20 (white-box)", ROBUST, dense)]),
              ("R2S", [("natural", "r2s_natural", r2s),
                       (paper_label, "r2s_transfer_paper", r2s),
                       (f"PGD-20 transferred (strong), minimum over {n_src} source tickets", "r2s_transfer_strong",
                        r2s),
                       ("worst case per example, every attack", "r2s_worst_case", r2s)])]
    bars = [(g, [(label, row.get(m)) for label, m, row in items]) for g, items in groups]
    errors = {(g, label): row.get(f"{m}_ci95") for g, items in groups for label, m, row in items}
    table = [[g] + [mean_ci(row, m) for _, m, row in items] + [None] * (4 - len(items)) for g, items in groups]
    faint = application_paper(spec, points, table, paper_label)
    sections.insert(0, ("R2S vs dense adversarial training",
                        md_table(["model", "natural", "PGD-20 (white-box / transferred, paper protocol)",
                                  "PGD-20 transferred (strong)", "worst case (strongest adaptive)"], table)))
    if spec.get("paper_overlay"):
        sections.append(("paper", f"transfer between tickets of different k: {paper.TRANSFER['offdiag'][0]:g}-"
                                  f"{paper.TRANSFER['offdiag'][1]:g}% robust accuracy off the diagonal vs "
                                  f"{paper.TRANSFER['diag'][0]:g}-{paper.TRANSFER['diag'][1]:g}% on it "
                                  f"({paper.SOURCE})"))
    return write_outputs("application", spec, rows, summary, fig_dir, sections,
                         lambda path: draw.application_figure(path, matrix, bars, faint,
                                                              "Transfer between RSTs and R2S", caption(spec), errors))


def application_paper(spec, points, table, transfer_label):
    """The paper's bars (cifar10 profile), also appended to ``table``; None without ``paper_overlay``."""
    arch = points[0].config().arch if points else None
    if not spec.get("paper_overlay") or arch not in paper.R2S:
        return None
    ref, arch_dense = paper.R2S[arch], paper.DENSE.get(arch, {})
    faint = {"dense AT": [("natural", arch_dense.get("natural")), ("PGD-20 (white-box)", arch_dense.get("robust"))],
             "R2S": [("natural", ref["natural"]), (transfer_label, ref["transfer"])]}
    table += [["paper " + g] + [v for _, v in items] + [None] * (4 - len(items)) for g, items in faint.items()]
    return faint


def calibration(spec, points, fig_dir):
    from experiments import calibration as calib
    return calib.report(spec, points, fig_dir)


REPORTS = {"existence": existence, "property": property_, "application": application, "calibration": calibration}
