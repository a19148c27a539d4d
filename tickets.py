"""Tickets and runs as artefacts (see docs/tickets.md and docs/runs.md).

    python tickets.py export CKPT_OR_RUN_DIR --out FILE
    python tickets.py summary [DIR] [--sort COL] [--desc] [--out FOLDER]

``export`` writes a self-contained ticket (bit-packed masks, kept weights in the
fewest bits that rebuild them exactly, the run's flags) and its model card
(``<FILE stem>.card.md`` / ``.card.json``); ``main.py -e --pretrained FILE``, the
ft_* tasks and ``test_trans.py`` load it like a checkpoint. ``summary`` tabulates
every results.json under DIR (utils/summary.py). A thin dispatcher: each
subcommand's work lives in its own module.
"""
import argparse
import os
import sys

from utils.errors import UserError, cli_main


class _Parser(argparse.ArgumentParser):
    """argparse that raises a one-line UserError (exit 2 through cli_main) instead of printing usage."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message} (see --help)")


def run_export(args, out=sys.stdout):
    from trainers.ticket_export import export
    card = export(args.path, args.out)
    t, c = card["ticket"]["bytes"], card["checkpoint"]["bytes"]
    out.write(f"wrote {args.out}: {t} bytes ({100.0 * t / c:.1f}% of the {c}-byte checkpoint); "
              f"card: {os.path.splitext(args.out)[0]}.card.md\n")
    return card


def build_parser():
    from utils import summary
    p = _Parser(prog="tickets.py", description="Tickets and runs as artefacts.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    exp = sub.add_parser("export", help="a checkpoint or run directory -> ticket file and model card")
    exp.add_argument("path", metavar="CKPT_OR_RUN_DIR", help="checkpoint file, or a run directory "
                                                             "(its checkpoints/model_best.pth)")
    exp.add_argument("--out", required=True, help="ticket file to write (e.g. ticket.pth); the card goes "
                                                  "beside it")
    exp.set_defaults(func=run_export)
    summary.add_parser(sub)
    return p


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return args.func(args, sys.stdout)


if __name__ == "__main__":
    cli_main(main)
