"""Tickets as artefacts (see README, "Tickets as files").

    python tickets.py export CKPT_OR_RUN_DIR --out FILE

``export`` writes a self-contained ticket (bit-packed masks, kept weights in the
fewest bits that rebuild them exactly, the run's flags) and its model card
(``<FILE stem>.card.md`` / ``.card.json``). ``main.py -e --pretrained FILE``,
the ft_* tasks and ``test_trans.py`` load it like a checkpoint.
"""
import argparse
import os
import sys

from utils.errors import UserError, cli_main


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{self.prog}: {message} (see --help)")


def build_parser():
    p = _Parser(prog="tickets.py", description="Export tickets as files.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    exp = sub.add_parser("export", help="a checkpoint or run directory -> ticket file and model card")
    exp.add_argument("path", metavar="CKPT_OR_RUN_DIR", help="checkpoint file, or a run directory "
                                                             "(its checkpoints/model_best.pth)")
    exp.add_argument("--out", required=True, help="ticket file to write (e.g. ticket.pth); the card goes "
                                                  "beside it")
    return p


def run_export(args):
    from trainers.ticket_export import export
    card = export(args.path, args.out)
    t, c = card["ticket"]["bytes"], card["checkpoint"]["bytes"]
    sys.stdout.write(f"wrote {args.out}: {t} bytes ({100.0 * t / c:.1f}% of the {c}-byte checkpoint); "
                     f"card: {os.path.splitext(args.out)[0]}.card.md\n")
    return card


COMMANDS = {"export": run_export}


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    cli_main(main)
