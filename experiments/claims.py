"""The paper's claims, tested on a figure's CSV rows: ``<figure>/claims.md`` and ``claims.json``.

Generated from the per-seed rows, never written by hand (``python -m experiments.claims
FIGURE CSV --out DIR`` regenerates them from a published CSV). Every comparison is a
difference paired by seed (seed s of one variant against seed s of the other: the same
data order, and for tickets of one network the same random network), summarised as the
mean and the 95% Student-t interval over seeds (``experiments.stats``), and judged by a
rule relative to the regime (``experiments.rules``: shares of the dense natural-to-robust
drop, the paper's value of the same share beside it). Each claim is judged twice: with
every run, and without the seeds of runs that did not converge.

When the existence figure holds reference-AutoAttack numbers (``panel = autoattack``),
the claims state the PGD-20 − AutoAttack gap per network; above AA_GAP points for any
network, C1a is judged on the AutoAttack numbers instead (for every network it has).
"""
import argparse
import csv
import json
import os
import sys

from experiments import rules
from experiments.convergence import describe_share, share
from experiments.rules import FAILS, HOLDS, OPEN, at_least, above, scaled, seeds_needed
from experiments.stats import describe, fmt, paired

ROBUST, NATURAL, SELECTED = "best_robust_acc1", "best_natural_acc1", "best_acc1"
AA_GAP = 3.0    # points: PGD-20 − AutoAttack above this on any network -> C1a from AutoAttack numbers
PAPER_C1 = {"cResNet18": ("ResNet18: RST 47.0% at k = 0.1 vs 50.19% dense AT (CIFAR-10): a share of "
                          f"{(47.0 - 50.19) / rules.PAPER_DROP:.2f} of the dense drop", (47.0 - 50.19) / rules.PAPER_DROP),
            "WideResNet32": ("WRN-34-10: dense AT 52.27% (CIFAR-10); its RST curve only in the paper's figure", None)}


def by_seed(rows, metric, **match):
    """{seed: value} of the per-seed rows matching ``match``."""
    return {r["seed"]: r.get(metric) for r in rows
            if r.get("row") == "seed" and all(r.get(k) == v for k, v in match.items())}


def converged_only(rows):
    """The rows without per-seed rows of runs that did not converge (pairs with them drop out)."""
    return [r for r in rows if not (r.get("row") == "seed" and r.get("converged") is False)]


def _d(values):
    return describe(list(values.values()))


def dense_drop(rows, **match):
    """describe() of dense AT's per-seed natural − PGD-20 drop (points)."""
    return rules.drop_of(by_seed(rows, NATURAL, **match), by_seed(rows, ROBUST, **match))


def claim(cid, text, paper, rule, numbers, verdict, threshold=None, seeds=None, **extra):
    """``threshold``: {quantity, value, paper}: the rule's threshold as a share and the paper's value."""
    return dict({"id": cid, "claim": text, "paper": paper, "rule": rule, "numbers": numbers, "verdict": verdict,
                 "threshold": threshold, "seeds_needed": seeds}, **extra)


def ks_of(rows, **match):
    return sorted({r["k"] for r in rows if r.get("row") == "seed" and all(r.get(k) == v for k, v in match.items())})


def _part(d, threshold, verdict):
    """(verdict, seeds needed, leans to hold) of one part of a claim."""
    return verdict, seeds_needed(d, threshold), d["mean"] is not None and d["mean"] >= threshold


def existence_claims(rows, attack="PGD-20"):
    """C1a and C1b per architecture, on ``best_robust_acc1`` (``attack`` names what measured it)."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows if r.get("panel") == "main"):
        arch = next((r.get("arch") for r in rows if r.get("model") == model), None)
        drop = dense_drop(rows, model=model, variant="dense AT", panel="main")
        dense = by_seed(rows, ROBUST, model=model, variant="dense AT", panel="main")
        ks = ks_of(rows, model=model, variant="RST", panel="main")
        shares = {k: scaled(paired(by_seed(rows, ROBUST, model=model, variant="RST", k=k, panel="main"), dense),
                            drop["mean"]) for k in ks}
        verdicts = [at_least(shares[k], -rules.MATCH_SHARE) for k in ks]
        need = min(3, len(ks))
        verdict = rules.over_parts(verdicts, need)
        parts = [_part(shares[k], -rules.MATCH_SHARE, v) for k, v in zip(ks, verdicts)]
        paper_text, paper_share = PAPER_C1.get(arch, ("no number for this architecture in SPEC section 9", None))
        out.append(claim(
            f"C1a {model}", "RSTs match or surpass the robust accuracy of the dense adversarially trained "
            "network over a wide range of k.", paper_text,
            f"(RST − dense AT {attack} accuracy) / dense AT's drop, per k, paired by seed; a k matches when the "
            f"interval's lower end is >= −{rules.MATCH_SHARE:g}; holds if at least {need} k match",
            [f"dense AT drop (natural − PGD-20): {fmt(drop)} points"]
            + [f"k = {k:g}: {rules.fmt_share(shares[k])} ({v})" for k, v in zip(ks, verdicts)],
            verdict, {"quantity": "(RST − dense AT) / dense drop", "value": -rules.MATCH_SHARE,
                      "paper": paper_share}, rules.claim_seeds(parts, need, verdict)))
        out.append(shape_claim(rows, model, ks, drop))
    return out


def shape_claim(rows, model, ks, drop):
    """C1b: the curve rises from the smallest k to its best k and falls from it to the largest k; the
    best k is chosen on the selection split (``best_acc1``: the hold-out's PGD-20), judged on the test."""
    curves = {k: by_seed(rows, ROBUST, model=model, variant="RST", k=k, panel="main") for k in ks}
    chooser = {k: _d(by_seed(rows, SELECTED, model=model, variant="RST", k=k, panel="main"))["mean"] for k in ks}
    known = [k for k in ks if _d(curves[k])["mean"] is not None and chooser[k] is not None]
    if len(known) < 3:
        return claim(f"C1b {model}", SHAPE, SHAPE_PAPER, SHAPE_RULE, ["fewer than 3 k measured"], OPEN)
    best = max(known[1:-1] or known, key=lambda k: chooser[k])
    rise = scaled(paired(curves[best], curves[known[0]]), drop["mean"])
    fall = scaled(paired(curves[best], curves[known[-1]]), drop["mean"])
    parts = [above(rise), above(fall)]
    verdict = HOLDS if parts == [HOLDS, HOLDS] else FAILS if FAILS in parts else OPEN
    seeds = None
    if verdict == OPEN:
        seeds = max((seeds_needed(d, 0.0) for d, v in ((rise, parts[0]), (fall, parts[1])) if v == OPEN),
                    key=lambda n: n if isinstance(n, int) else 10 ** 9)
    return claim(f"C1b {model}", SHAPE, SHAPE_PAPER, SHAPE_RULE,
                 [f"best k on the selection split = {best:g} (test {fmt(_d(curves[best]))})",
                  f"rise: k = {best:g} − k = {known[0]:g}: {rules.fmt_share(rise)} of the dense drop ({parts[0]})",
                  f"fall: k = {best:g} − k = {known[-1]:g}: {rules.fmt_share(fall)} ({parts[1]})"], verdict,
                 {"quantity": "(best k − end k) / dense drop", "value": 0.0,
                  "paper": round((47.7 - 37.6) / rules.PAPER_DROP, 3)}, seeds)


SHAPE = "The RST's robust accuracy rises from tiny k, and falls at large k."
SHAPE_PAPER = ("ResNet18: 37.6% at k = 0.01, about 46-48% for k = 0.05-0.2 (a rise of 0.32 of the dense drop), "
               "a drop above k = 0.6")
SHAPE_RULE = ("robust accuracy at the best k (chosen by the selection split's PGD-20, not the test's) minus that at "
              "the smallest (rise) and at the largest k (fall), as shares of the dense drop, paired by seed; holds "
              "if both intervals lie above 0, does not hold if either lies at or below 0")


def autoattack_gaps(rows):
    """[(model, variant, k, {seed: PGD-20 − AutoAttack})] for every network AutoAttack evaluated."""
    out = []
    for r in rows:
        if r.get("row") != "seed" or r.get("panel") != "autoattack" or r.get("aa_robust_acc1") is None:
            continue
        pgd = by_seed(rows, ROBUST, model=r["model"], variant=r["variant"], k=r["k"], panel="main").get(r["seed"])
        if pgd is not None:
            out.append((r["model"], r["variant"], r["k"], r["seed"], pgd - r["aa_robust_acc1"], r))
    return out


def autoattack_claim(rows):
    """A0: the PGD-20 − AutoAttack gap per network (and which numbers C1a uses)."""
    gaps = autoattack_gaps(rows)
    if not gaps:
        return None, False
    worst = max(g for *_, g, _ in gaps)
    use_aa = worst > AA_GAP
    first = gaps[0][-1]
    protocol = (f"reference AutoAttack {first.get('aa_version')}, APGD/FAB steps {first.get('aa_steps')}"
                f"{' (reduced)' if first.get('aa_steps') not in (None, 100) else ''}, "
                f"{first.get('aa_n_eval') or 'all'} test images")
    numbers = [f"{m} {v} k = {k:g} seed {s}: PGD-20 − AutoAttack = {g:.2f} points" for m, v, k, s, g, _ in gaps]
    return claim("A0", "(ours) PGD-20 is as strong as AutoAttack on these networks (the verdicts' attack).",
                 "the paper reports PGD-20 only", f"{protocol}; PGD-20 − AutoAttack per network; above {AA_GAP:g} "
                 "points for any network, C1a is judged on AutoAttack numbers",
                 numbers, "AutoAttack numbers used for C1a" if use_aa else "PGD-20 numbers kept",
                 {"quantity": "PGD-20 − AutoAttack (points)", "value": AA_GAP, "paper": None},
                 max_gap=worst), use_aa


def property_claims(rows):
    ks = ks_of(rows, variant="RST")
    low = ks[:2]
    drop = dense_drop(rows, variant="dense (adversarial)")

    def share(a, b):
        """{k: (variant a − variant b PGD-20 accuracy) / dense drop, paired by seed}."""
        return {k: scaled(paired(by_seed(rows, ROBUST, variant=a, k=k), by_seed(rows, ROBUST, variant=b, k=k)),
                          drop["mean"]) for k in ks}

    reinit, nat, adv = share("RST", "ft_reinit"), share("RST", "RTT (natural)"), share("RST", "RTT (adversarial)")
    inherit, rtt_gap = share("ft_inherit", "ft_reinit"), share("RTT (adversarial)", "RTT (natural)")
    c2 = [at_least(reinit[k], -rules.MATCH_SHARE) for k in low]
    c3 = [above(inherit[k], 0.0, rules.NOTABLE_SHARE) for k in ks]
    c4 = [above(rtt_gap[k]) for k in ks]
    v2 = HOLDS if c2 and all(v == HOLDS for v in c2) else FAILS if FAILS in c2 else OPEN
    v3, v4 = rules.over_parts(c3, len(ks) // 2 + 1), rules.over_parts(c4, len(ks) // 2 + 1)
    head = f"dense AT drop: {fmt(drop)} points"
    return [
        claim("C2", "An RST without any training matches or beats an adversarially trained subnetwork of the same "
              "structure (ft_reinit) at low k.", "property figure (1); no numbers in SPEC section 9",
              f"(RST − ft_reinit PGD-20) / dense drop at the {len(low)} smallest k, paired by seed; holds if the "
              f"lower end is >= −{rules.MATCH_SHARE:g} at both, does not hold if the upper end is below at either",
              [head] + [f"k = {k:g}: {rules.fmt_share(reinit[k])} ({v})" for k, v in zip(low, c2)], v2,
              {"quantity": "(RST − ft_reinit) / dense drop", "value": -rules.MATCH_SHARE, "paper": None},
              rules.claim_seeds([_part(reinit[k], -rules.MATCH_SHARE, v) for k, v in zip(low, c2)], len(low), v2)),
        claim("C3", "Fine-tuned RSTs with inherited weights (ft_inherit) are notably more robust than re-initialised "
              "ones (ft_reinit).", "property figure (2); no numbers in SPEC section 9",
              f"(ft_inherit − ft_reinit PGD-20) / dense drop per k, paired by seed; a k holds if the interval lies "
              f"above 0 with mean >= {rules.NOTABLE_SHARE:g}; holds if more than half the k hold",
              [head] + [f"k = {k:g}: {rules.fmt_share(inherit[k])} ({v})" for k, v in zip(ks, c3)], v3,
              {"quantity": "(ft_inherit − ft_reinit) / dense drop", "value": rules.NOTABLE_SHARE, "paper": None},
              rules.claim_seeds([_part(inherit[k], 0.0, v) for k, v in zip(ks, c3)], len(ks) // 2 + 1, v3)),
        claim("C4", "Tickets drawn from an adversarially trained network (adversarial RTTs) are more robust than "
              "tickets drawn from a naturally trained one (natural RTTs); RSTs are compared with both.",
              "property figure (RTTs); qualitative, no numbers in SPEC section 9 (our reading of the figure)",
              "(adversarial RTT − natural RTT PGD-20) / dense drop per k, paired by seed; holds if more than half "
              "the k lie above 0. RST − RTT shares are listed for the reader, without a verdict",
              [head] + [f"k = {k:g}: adversarial − natural RTT {rules.fmt_share(rtt_gap[k])} ({v}); RST − natural "
                        f"RTT {rules.fmt_share(nat[k])}; RST − adversarial RTT {rules.fmt_share(adv[k])}"
                        for k, v in zip(ks, c4)], v4,
              {"quantity": "(adversarial RTT − natural RTT) / dense drop", "value": 0.0, "paper": None},
              rules.claim_seeds([_part(rtt_gap[k], 0.0, v) for k, v in zip(ks, c4)], len(ks) // 2 + 1, v4)),
    ]


def _recovery(rows, off_metric):
    """{seed: (off-diagonal − diagonal) / (natural − diagonal)} of the transfer matrix: the share of the
    white-box drop that transfer recovers. Natural: the matrix's natural row (``natural_mean``), else
    the mean natural accuracy of the seed's RST rows."""
    off, diag = by_seed(rows, off_metric, variant="matrix"), by_seed(rows, "diag_mean", variant="matrix")
    nat = by_seed(rows, "natural_mean", variant="matrix")
    out = {}
    for s in set(off) & set(diag):
        n = nat.get(s) if nat.get(s) is not None else _seed_natural(rows, s)
        if None not in (off[s], diag[s], n) and n > diag[s]:
            out[s] = (off[s] - diag[s]) / (n - diag[s])
    return out


def _seed_natural(rows, seed):
    """Mean natural accuracy of one seed's RST rows (the tickets of that random network)."""
    values = [r[NATURAL] for r in rows if r.get("row") == "seed" and r.get("variant") == "RST"
              and r.get("seed") == seed and r.get(NATURAL) is not None]
    return sum(values) / len(values) if values else None


def images(rows, variant):
    """The test images a variant's numbers were computed on (its n_eval; None = the whole test split)."""
    values = {r.get("n_eval") for r in rows if r.get("row") == "seed" and r.get("variant") == variant}
    return "whole test split" if values <= {None, ""} else ", ".join(str(v) for v in sorted(values, key=str))


def application_claims(rows):
    strong, paper_p = _d(_recovery(rows, "offdiag_mean")), _d(_recovery(rows, "offdiag_mean_paper"))
    drop = dense_drop(rows, variant="dense AT")
    dense = by_seed(rows, ROBUST, variant="dense AT")
    transfer = scaled(paired(by_seed(rows, "r2s_transfer_paper", variant="r2s"), dense), drop["mean"])
    strong_t = scaled(paired(by_seed(rows, "r2s_transfer_strong", variant="r2s"), dense), drop["mean"])
    worst = scaled(paired(by_seed(rows, "r2s_worst_case", variant="r2s"), dense), drop["mean"])
    v5, v6a, v6b = at_least(strong, rules.RECOVERY_SHARE), above(transfer), above(worst)
    counted = {"r2s": images(rows, "r2s"), "dense AT": images(rows, "dense AT")}
    equal = counted["r2s"] == counted["dense AT"]
    imgs = (f"images: R2S {counted['r2s']}, dense AT {counted['dense AT']}"
            + ("" if equal else " (NOT the same images: the comparison is asymmetric)"))
    six = {"images": counted, "equal_images": equal}
    return [
        claim("C5", "Adversarial examples transfer poorly between RSTs of different k drawn from one random "
              "network: accuracy off the diagonal is well above the diagonal (white-box).",
              "60-74% off the diagonal vs 44-48% on it (CIFAR-10): transfer recovers about 0.6 of the white-box drop",
              f"per seed, (mean off-diagonal − mean diagonal) / (mean natural − mean diagonal) of the strong transfer "
              f"matrix: the share of the white-box drop that transfer recovers; holds if the interval's lower end "
              f"is >= {rules.RECOVERY_SHARE:g}, does not hold if its upper end is below",
              [f"strong: {rules.fmt_share(strong)}", f"paper protocol: {rules.fmt_share(paper_p)}",
               "natural: the matrix's natural row" if by_seed(rows, "natural_mean", variant="matrix") else
               "natural: the tickets' own test-split natural accuracy (this CSV has no matrix natural row)",
               f"off-diagonal (strong) {fmt(_d(by_seed(rows, 'offdiag_mean', variant='matrix')))}; diagonal "
               f"{fmt(_d(by_seed(rows, 'diag_mean', variant='matrix')))}"], v5,
              {"quantity": "(off-diagonal − diagonal) / (natural − diagonal)", "value": rules.RECOVERY_SHARE,
               "paper": 0.6}, seeds_needed(strong, rules.RECOVERY_SHARE) if v5 == OPEN else None),
        claim("C6a", "R2S under transferred PGD-20 (the paper's setting) is more robust than dense adversarial "
              "training under white-box PGD-20.", "R2S 63.93% vs dense AT 50.19% (ResNet18, CIFAR-10): "
              f"{(63.93 - 50.19) / rules.PAPER_DROP:.2f} of the dense drop",
              "(R2S transferred accuracy, paper protocol − dense AT PGD-20) / dense drop, paired by seed; holds if "
              "the interval lies above 0, does not hold if it lies at or below 0",
              [f"dense AT drop: {fmt(drop)} points", f"paper protocol: {rules.fmt_share(transfer)}",
               f"strong transfer: {rules.fmt_share(strong_t)}", imgs], v6a,
              {"quantity": "(R2S transferred − dense AT) / dense drop", "value": 0.0,
               "paper": round((63.93 - 50.19) / rules.PAPER_DROP, 3)},
              seeds_needed(transfer, 0.0) if v6a == OPEN else None, **six),
        claim("C6b", "(ours) R2S stays more robust than dense adversarial training under the strongest adaptive "
              "attack (worst case over every attack run, per example).", "not evaluated in the paper",
              "(R2S worst-case − dense AT PGD-20) / dense drop, paired by seed; same rule as C6a",
              [f"worst case: {rules.fmt_share(worst)}", imgs], v6b,
              {"quantity": "(R2S worst case − dense AT) / dense drop", "value": 0.0, "paper": None},
              seeds_needed(worst, 0.0) if v6b == OPEN else None, **six),
    ]


def as_main(rows):
    """The AutoAttack rows as if they were the main panel's (robust = AutoAttack accuracy), the hold-out
    selection metric copied from the run they evaluated; for judging C1a on AutoAttack numbers."""
    out = []
    for r in rows:
        if r.get("row") == "seed" and r.get("panel") == "autoattack":
            main = by_seed(rows, SELECTED, model=r["model"], variant=r["variant"], k=r["k"], panel="main")
            out.append(dict(r, panel="main", **{ROBUST: r.get("aa_robust_acc1"), NATURAL: r.get("aa_natural_acc1"),
                                                SELECTED: main.get(r["seed"])}))
    return out


def existence_all(rows):
    """A0 (the AutoAttack gap, when measured), then C1a/C1b on PGD-20 or, past AA_GAP, AutoAttack numbers."""
    a0, use_aa = autoattack_claim(rows)
    return ([a0] if a0 else []) + (existence_claims(as_main(rows), "AutoAttack") if use_aa else
                                   existence_claims(rows))


CLAIMS = {"existence": existence_all, "property": property_claims, "application": application_claims}


def judged(figure, rows):
    """Every claim judged on all runs, with its verdict without the unconverged runs' seeds beside it."""
    every, settled = CLAIMS[figure](rows), CLAIMS[figure](converged_only(rows))
    for c, s in zip(every, settled):
        c["verdict_converged_only"], c["numbers_converged_only"] = s["verdict"], s["numbers"]
    return every


def write_claims(figure, rows, fig_dir, header):
    """``claims.md`` and ``claims.json`` in ``fig_dir``; returns the md path."""
    claims, conv = judged(figure, rows), share(rows)
    with open(os.path.join(fig_dir, "claims.json"), "w") as fh:
        json.dump({"figure": figure, "rules": {"match_share": rules.MATCH_SHARE, "notable_share": rules.NOTABLE_SHARE,
                                               "recovery_share": rules.RECOVERY_SHARE, "aa_gap": AA_GAP,
                                               "paper_drop": rules.PAPER_DROP},
                   "convergence": conv, "claims": claims}, fh, indent=1)
    lines = [f"# Claims tested by the {figure} figure", "", header, "", describe_share(conv) + ".", "",
             "Shares are of the dense network's natural-to-PGD-20 drop measured in the same runs (the paper's value "
             "of the same share beside it), mean ± 95% interval over seeds (n = seeds). Verdicts: with every run / "
             "without the seeds of unconverged runs. Generated by experiments/claims.py from the figure's CSV; rules "
             "are in each row.", "",
             "| claim | measured | paper | verdict (all / converged only) | seeds needed | rule |",
             "|---|---|---|---|---|---|"]
    for c in claims:
        lines.append(f"| **{c['id']}** {c['claim']} | {'<br>'.join(c['numbers'])} | {c['paper']} | "
                     f"**{c['verdict']}** / {c['verdict_converged_only']} | {c['seeds_needed'] or '–'} | {c['rule']} |")
    path = os.path.join(fig_dir, "claims.md")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def read_rows(path):
    """A figure CSV's rows with numbers, booleans and empty cells typed as ``collect`` wrote them."""
    def typed(key, value):
        if value == "":
            return None
        if value in ("True", "False"):
            return value == "True"
        if key in ("seed", "n_eval", "aa_n_eval", "n_seeds"):
            return int(float(value))
        try:
            return float(value)
        except ValueError:
            return value
    with open(path, newline="") as fh:
        return [{k: typed(k, v) for k, v in row.items()} for row in csv.DictReader(fh)]


def main(argv=None):
    """``python -m experiments.claims FIGURE CSV [--out DIR] [--header TEXT]``: claims.md/.json from a CSV."""
    p = argparse.ArgumentParser(prog="python -m experiments.claims", description=main.__doc__)
    p.add_argument("figure", choices=sorted(CLAIMS))
    p.add_argument("csv")
    p.add_argument("--out", default=None, help="folder for claims.md/.json (default: the CSV's folder)")
    p.add_argument("--header", default=None, help="the line under the title (default: names the CSV)")
    args = p.parse_args(argv)
    out = args.out or os.path.dirname(os.path.abspath(args.csv))
    os.makedirs(out, exist_ok=True)
    path = write_claims(args.figure, read_rows(args.csv), out, args.header or f"regenerated from {args.csv}")
    sys.stdout.write(path + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
