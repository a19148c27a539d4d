"""Write the documentation site's home page (docs/index.md) from README.md, so the two never drift.

    python scripts/docs_home.py           # rewrite docs/index.md
    python scripts/docs_home.py --check   # change nothing; exit 1 if docs/index.md is out of date

The home page is the README with its links made relative to docs/ and its last section, which
points from the repository into docs/, renamed for a reader who is already on the site.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_POINTER = "Everything else is in [`docs/`](docs/index.md), one page per topic, built as a site with MkDocs:"
HOME_POINTER = "This page is the repository's README; the rest is one page per topic:"


def home_page(readme):
    """docs/index.md's text from README.md's; an error if the README lost the line the page rewrites."""
    if README_POINTER not in readme or "\n## Documentation\n" not in readme:
        raise ValueError("README.md has no '## Documentation' section starting with the line pointing to docs/")
    text = readme.replace(README_POINTER, HOME_POINTER).replace("](docs/", "](")
    return text.replace("\n## Documentation\n", "\n## Pages\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if docs/index.md differs")
    args = p.parse_args(argv)
    with open(os.path.join(ROOT, "README.md")) as fh:
        try:
            new = home_page(fh.read())
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    path = os.path.join(ROOT, "docs", "index.md")
    with open(path) as fh:
        old = fh.read()
    if args.check:
        if new != old:
            print("docs/index.md differs from README.md; run python scripts/docs_home.py", file=sys.stderr)
        return int(new != old)
    if new != old:
        with open(path, "w") as fh:
            fh.write(new)
    print(f"docs/index.md {'updated' if new != old else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
