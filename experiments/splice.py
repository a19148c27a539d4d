"""Splice each figure's generated claims table into a documentation page.

``figures.py --publish DIR`` writes ``DIR/<figure>_claims.md``; a page (docs/figures.md) shows
its table between two markers::

    <!-- claims: existence -->
    | claim | ... |
    <!-- /claims -->

    python -m experiments.splice docs/figures.md           # rewrite the tables from docs/figures/
    python -m experiments.splice docs/figures.md --check   # exit 1 if a table differs from its file

The claims directory defaults to ``figures/`` beside the page (``--claims-dir`` to change it).
"""
import argparse
import os
import re
import sys

MARKER = re.compile(r"(<!-- claims: ([\w/-]+) -->\n)(.*?)(<!-- /claims -->)", re.S)
VERDICTS = re.compile(r"(<!-- verdicts: ([\w/. -]+) -->\n)(.*?)(<!-- /verdicts -->)", re.S)
FIGURES = ("existence", "property", "application")


def claims_table(path):
    """The table lines (``|``...) of a generated ``<figure>_claims.md``."""
    with open(path) as fh:
        return [line for line in fh.read().splitlines() if line.startswith("|")]


def splice(text, claims_dir):
    """``text`` with every marked table replaced by its figure's generated table."""
    def one(m):
        path = os.path.join(claims_dir, f"{m.group(2)}_claims.md")
        if not os.path.exists(path):
            raise FileNotFoundError(f"claims: {m.group(2)}: no {path}")
        return m.group(1) + "\n" + "\n".join(claims_table(path)) + "\n\n" + m.group(4)
    return VERDICTS.sub(lambda m: m.group(1) + "\n" + verdict_table(claims_dir, m.group(2).split()) + "\n\n"
                        + m.group(4), MARKER.sub(one, text))


def verdict_table(claims_dir, regimes):
    """One row per claim, one column per regime (a folder under ``claims_dir``, '.' for itself): the
    verdict with every run / without unconverged runs, and the claim's first measured line."""
    import json
    loaded = []
    for regime in regimes:
        claims = {}
        for figure in FIGURES:
            path = os.path.join(claims_dir, regime, f"{figure}_claims.json")
            if not os.path.exists(path):
                raise FileNotFoundError(f"verdicts: {regime}: no {path}")
            with open(path) as fh:
                claims.update({c["id"]: c for c in json.load(fh)["claims"]})
        loaded.append(claims)
    ids = list(dict.fromkeys(i for claims in loaded for i in claims))
    head = "| claim | threshold (paper's value) | " + " | ".join(f"`{r}`: all runs / converged only" for r in regimes)
    lines = [head + " |", "|---|---|" + "---|" * len(regimes)]
    for cid in ids:
        first = next(claims[cid] for claims in loaded if cid in claims)
        cells = [_verdict_cell(claims.get(cid)) for claims in loaded]
        lines.append(f"| {cid} | {_threshold(first)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict_cell(c):
    if c is None:
        return "–"
    seeds = f" (seeds needed: {c['seeds_needed']})" if c.get("seeds_needed") else ""
    return f"**{c['verdict']}** / {c.get('verdict_converged_only', '–')}{seeds}"


def _threshold(c):
    t = c.get("threshold")
    if not t:
        return "–"
    paper = "–" if t.get("paper") is None else f"{t['paper']:.2f}"
    return f"{t['quantity']}: {t['value']:g} ({paper})"
