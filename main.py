"""Search Robust Scratch Tickets and fine-tune them (see README)."""
import sys

from utils.config import parse_config
from utils.errors import cli_main


def main(argv=None):
    cfg = parse_config(argv, prog="main.py")
    from trainers.loop import run_main
    out = run_main(cfg, entry="main")
    if cfg.evaluate:
        robust = out["robust_acc1"]
        sys.stdout.write(f"Natural Acc: {out['natural_acc1']:.2f}, Robust Acc: "
                         f"{'n/a' if robust is None else format(robust, '.2f')}\n")
    return out


if __name__ == "__main__":
    cli_main(main)
