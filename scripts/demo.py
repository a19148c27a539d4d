"""First-run demo: search a Robust Scratch Ticket on Digits and compare it with a dense
adversarially trained network of the same architecture (same data, epochs and attack).

    python scripts/demo.py [extra flags, e.g. --epochs 4 --log-dir /tmp/runs]

Extra flags are passed to both runs. Prints natural and PGD-20 accuracy of both.
"""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import main as search_entry  # noqa: E402
import train_full as dense_entry  # noqa: E402
from utils.config import parse_config  # noqa: E402
from utils.errors import cli_main  # noqa: E402

CONFIG = os.path.join(ROOT, "config_rst", "demo-digits.yaml")


def row(label, res, seconds):
    k = f"{res['prune_rate']:g}"
    return f"{label:<42} {k:>5} {res['natural_acc1']:>9.2f} {res['robust_acc1']:>9.2f} {seconds:>8.0f}s"


def demo(argv):
    argv = list(argv or [])
    parse_config(["--config", CONFIG] + argv, prog="demo.py")  # --help, unknown or bad flags: before any run
    argv = ["--config", CONFIG] + argv
    start = time.time()
    ticket = search_entry.main(argv + ["--task", "search"])
    mid = time.time()
    dense = dense_entry.main(argv)
    end = time.time()
    lines = [f"{'':<42} {'k':>5} {'natural':>9} {'PGD-20':>9} {'time':>9}",
             row("RST (scores searched, no weight training)", ticket, mid - start),
             row("dense adversarial training", dense, end - mid)]
    sys.stdout.write("\n".join(lines) + "\n")
    return ticket, dense


if __name__ == "__main__":
    cli_main(demo, sys.argv[1:])
