"""Transferability between tickets, and the R2S defence (see docs/evaluation.md).

    python test_trans.py --pretrained DIR/<net>_<k>.pth [--all_sources] [--r2s]
                         [--eval_attack autoattack [--aa_version standard|plus|rand]] [--n_eval N]

``--pretrained`` names the source ticket (every checkpoint in its folder is a
target), or a folder with ``--all_sources`` / ``--r2s``. Writes, in
<log-dir>/<config stem>/<name>/prune_rate=<k>/transfer/[width_mult=<w>/]: transfer_matrix.{csv,json,png}
(both transfer protocols, ``strong`` and the original's ``paper``) for the source row
or, with --all_sources, every row; with --r2s also r2s.json and checkpoints/r2s.pth;
and robust_vs_k.png (R2S's when --r2s).

stdout: first the original's lines, unchanged for scripts that parse them
(``Robust Acc of <path>: <acc>`` per target and ``Acc list: [...]`` per source, the
``paper`` protocol), then one labelled line per protocol and source; with --r2s,
one line of R2S accuracies; last, the whole report as one JSON line. Everything runs in fp32
(``--amp`` is refused); AutoAttack is the reference implementation (pyautoattack), see
attacks/autoattack.py.
"""
import json
import sys

from utils.config import parse_config
from utils.errors import cli_main


def main(argv=None):
    cfg = parse_config(argv, prog="test_trans.py")
    from evaluation import transfer_files
    from evaluation.transfer import run_transfer
    out = run_transfer(cfg)
    if "matrices" in out:
        lines = transfer_files.original_lines(out, cfg.pretrained) + transfer_files.protocol_lines(out)
        sys.stdout.write("".join(line + "\n" for line in lines))
    if cfg.r2s:
        from evaluation.r2s_eval import summary_line
        sys.stdout.write(summary_line(out.get("r2s", out)) + "\n")
    sys.stdout.write(json.dumps(out, sort_keys=True, default=str) + "\n")  # last: the report, for scripts
    return out


if __name__ == "__main__":
    cli_main(main)
