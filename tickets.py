"""Tickets and runs as artefacts (see README).

    python tickets.py summary [DIR] [--sort COL] [--desc] [--out FOLDER]

A thin dispatcher: each subcommand lives in its own module (``summary``: utils/summary.py)
and registers its subparser here.
"""
import argparse
import sys

from utils.errors import UserError, cli_main


class _Parser(argparse.ArgumentParser):
    """argparse that raises a one-line UserError (exit 2 through cli_main) instead of printing usage."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message} (see --help)")


def build_parser():
    from utils import summary
    p = _Parser(prog="tickets.py", description="Tickets and runs as artefacts.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    summary.add_parser(sub)
    return p


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return args.func(args, sys.stdout)


if __name__ == "__main__":
    cli_main(main)
