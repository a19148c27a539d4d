"""The documentation: a short README whose links resolve, every docs/ page in the MkDocs nav with
strict validation, the figures page's claims tables equal to the generated ones, the site's home
page carrying the README's commands. (CI also runs `mkdocs build --strict`, see .ci/run.)"""
import os
import re

import pytest
import yaml

from experiments import splice
from scripts import docs_home

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


def read(*path):
    with open(os.path.join(ROOT, *path)) as fh:
        return fh.read()


def fenced_blocks(text):
    return re.findall(r"^```\n(.*?)^```$", text, re.S | re.M)


def test_readme_is_short_and_keeps_ci_test_command_and_layout():
    readme = read("README.md")
    assert len(readme.splitlines()) <= 250
    assert "python -m pytest -q tests" in readme and "python -m pytest -q tests" in read(".ci", "run")
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    assert "| `docs/` | the documentation site" in layout and "| `evaluation/` |" in layout
    assert "(docs/differences.md)" in readme


def test_readme_links_resolve():
    readme = read("README.md")
    links = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", readme) if "://" not in t]
    assert "docs/index.md" in links
    missing = [t for t in links if t and not os.path.exists(os.path.join(ROOT, t))]
    assert not missing, missing


def nav_pages(nav):
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            yield from nav_pages(value)
        else:
            yield value


def test_every_docs_page_is_in_the_nav_and_validation_is_strict():
    cfg = yaml.safe_load(read("mkdocs.yml"))
    assert cfg["docs_dir"] == "docs"
    nav = list(nav_pages(cfg["nav"]))
    pages = sorted(os.path.relpath(os.path.join(d, f), DOCS).replace(os.sep, "/")
                   for d, _, files in os.walk(DOCS) for f in files if f.endswith(".md"))
    assert sorted(nav) == pages, "add every docs/ page (generated ones too) to mkdocs.yml's nav"
    v = cfg["validation"]
    assert v["nav"]["omitted_files"] == v["nav"]["not_found"] == "warn"
    assert v["links"]["not_found"] == v["links"]["anchors"] == v["links"]["unrecognized_links"] == "warn"
    assert re.search(r"^mkdocs>=1\.6,<2$", read("docs", "requirements.txt"), re.M)


def test_figures_page_claims_tables_equal_the_generated_ones():
    page, figures = read("docs", "figures.md"), os.path.join(DOCS, "figures")
    generated = sorted(os.path.relpath(os.path.join(d, f), figures)[:-len("_claims.md")]
                       for d, _, files in os.walk(figures) for f in files if f.endswith("_claims.md"))
    assert sorted(m.group(2) for m in splice.MARKER.finditer(page)) == generated
    assert [m.group(2) for m in splice.VERDICTS.finditer(page)] == [". digits-eps8"]
    assert splice.splice(page, figures) == page, "run: python -m experiments.splice docs/figures.md"
    assert splice.main([os.path.join(DOCS, "figures.md"), "--check"]) == 0
    readme = os.path.join(os.path.dirname(DOCS), "README.md")  # its verdict table, from the same files
    assert splice.main([readme, "--claims-dir", figures, "--check"]) == 0


def test_verdict_table_sets_regimes_side_by_side(tmp_path):
    for regime, verdict in ((".", "holds"), ("old", "inconclusive")):
        for figure in splice.FIGURES:
            folder = tmp_path / regime
            folder.mkdir(exist_ok=True)
            claims = [{"id": f"C-{figure}", "verdict": verdict, "verdict_converged_only": "holds", "numbers": [],
                       "seeds_needed": 7 if verdict == "inconclusive" else None,
                       "threshold": {"quantity": "share", "value": -0.15, "paper": -0.101}}]
            (folder / f"{figure}_claims.json").write_text(__import__("json").dumps({"claims": claims}))
    table = splice.verdict_table(str(tmp_path), [".", "old"]).splitlines()
    assert len(table) == 2 + len(splice.FIGURES)
    assert table[2] == ("| C-existence | share: -0.15 (-0.10) | **holds** / holds | **inconclusive** / holds "
                        "(seeds needed: 7) |")


def test_splice_replaces_a_stale_table(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "existence_claims.md").write_text(
        "# Claims\n\ntext\n\n| claim | verdict |\n|---|---|\n| C1 | **holds** |\n")
    page = tmp_path / "page.md"
    page.write_text("intro\n\n<!-- claims: existence -->\n\n| claim | verdict |\n|---|---|\n"
                    "| C1 | **does not hold** |\n\n<!-- /claims -->\n\nafter\n")
    assert splice.main([str(page), "--check"]) == 1
    assert splice.main([str(page)]) == 0
    assert page.read_text() == ("intro\n\n<!-- claims: existence -->\n\n| claim | verdict |\n|---|---|\n"
                                "| C1 | **holds** |\n\n<!-- /claims -->\n\nafter\n")
    assert splice.main([str(page), "--check"]) == 0


def test_home_page_carries_the_readme_commands_and_layout():
    readme, index = read("README.md"), read("docs", "index.md")
    assert fenced_blocks(readme) and fenced_blocks(readme) == fenced_blocks(index)
    layout = [ln for ln in readme.split("## Layout", 1)[1].splitlines() if ln.startswith("|")]
    assert layout and all(ln in index for ln in layout)


def test_home_page_is_the_readme_generated():
    """docs/index.md is scripts/docs_home.py's output, so a verdict changed in the README reaches the site."""
    readme = read("README.md")
    assert docs_home.main(["--check"]) == 0
    assert read("docs", "index.md") == docs_home.home_page(readme)
    drifted = readme.replace("| C3 |", "| C3 (edited) |", 1)
    assert drifted != readme and docs_home.home_page(drifted) != read("docs", "index.md")
    assert "](docs/" not in docs_home.home_page(readme) and "## Pages" in docs_home.home_page(readme)
    with pytest.raises(ValueError):
        docs_home.home_page(readme.replace("## Documentation", "## Elsewhere"))
