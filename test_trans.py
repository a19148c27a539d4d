"""Transferability between tickets, and the R2S defence (see README).

    python test_trans.py --pretrained DIR/<net>_<k>.pth [--all_sources] [--r2s]
                         [--eval_attack autoattack] [--n_eval N]

Writes transfer_matrix.{csv,json,png} and robust_vs_k.png (or, with --r2s,
r2s.json, checkpoints/r2s.pth and robust_vs_k.png) in
<log-dir>/<config stem>/<name>/prune_rate=<k>/transfer/.
"""
import sys

from utils.config import parse_config
from utils.errors import cli_main


def main(argv=None):
    cfg = parse_config(argv, prog="test_trans.py")
    from trainers.transfer import run_transfer
    out = run_transfer(cfg)
    if cfg.r2s:
        from trainers.r2s_eval import summary_line
        sys.stdout.write(summary_line(out) + "\n")
        return out
    for source, row in zip(out["sources"], out["matrix"]):
        sys.stdout.write(f"{source}: {[round(a, 2) for a in row]}\n")
    return out


if __name__ == "__main__":
    cli_main(main)
