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


def figures_marked(text):
    return [m.group(2) for m in MARKER.finditer(text)] + [f"verdicts of {m.group(2)}" for m in VERDICTS.finditer(text)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("page")
    p.add_argument("--claims-dir", default=None, help="where <figure>_claims.md are (default: figures/ beside the page)")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is out of date")
    args = p.parse_args(argv)
    claims_dir = args.claims_dir or os.path.join(os.path.dirname(os.path.abspath(args.page)), "figures")
    with open(args.page) as fh:
        text = fh.read()
    if not figures_marked(text):
        print(f"error: {args.page} has no '<!-- claims: FIGURE -->' marker", file=sys.stderr)
        return 2
    new = splice(text, claims_dir)
    if args.check:
        if new != text:
            print(f"{args.page}: claims tables differ from {claims_dir}/*_claims.md; "
                  f"run python -m experiments.splice {args.page}", file=sys.stderr)
            return 1
        return 0
    if new != text:
        with open(args.page, "w") as fh:
            fh.write(new)
    print(f"{args.page}: {', '.join(figures_marked(text))} {'updated' if new != text else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
