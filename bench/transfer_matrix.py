"""Cost of the transfer matrix (test_trans.py --all_sources): seconds per 100 images, N tickets.

    python bench/transfer_matrix.py --pretrained DIR [--n_eval 100] [--reps 1] [test_trans.py flags]

Three ways to get both protocols' N x N matrices, timed in one process on the same
tickets and images (natural accuracy, one forward per ticket, is in every one):

* ``original``: the original test_trans.py's structure, extended to both protocols:
  for every (source, target) pair the source's attacks are run again (N^2 of each);
* ``two attacks``: each source's PGD-20 with early stop (``pgd20``) and without
  (``pgd_transfer``) run once per batch and reused by every target (2N attacks);
* ``one trajectory``: what test_trans.py does: one trajectory per source and batch
  gives both protocols' examples (``evaluation.transfer.paper_and_strong``, N attacks).

Repetitions are interleaved; prints the median per way and the ratios against ``one trajectory``.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from attacks.pgd import pgd20, pgd_transfer  # noqa: E402
from data import build_dataset, make_loader, subset  # noqa: E402
from evaluation.transfer import load_tickets, paper_and_strong  # noqa: E402
from utils.config import parse_config  # noqa: E402


def natural(models, loader):
    with torch.no_grad():
        return [sum(int((m(x).argmax(1) == y).sum()) for x, y in loader) for m in models]


def count(target, examples, y):
    with torch.no_grad():
        return int((target(examples).argmax(1) == y).sum())


def original(models, loader, eps):
    for source in models:
        for target in models:
            for x, y in loader:
                count(target, pgd20(source, x, y, eps), y)
                count(target, pgd_transfer(source, x, y, eps), y)


def two_attacks(models, loader, eps):
    for source in models:
        for x, y in loader:
            paper, strong = pgd20(source, x, y, eps), pgd_transfer(source, x, y, eps)
            for target in models:
                count(target, paper, y)
                count(target, strong, y)


def one_trajectory(models, loader, eps):
    for source in models:
        for x, y in loader:
            paper, strong = paper_and_strong(source, x, y, eps)
            for target in models:
                count(target, paper, y)
                count(target, strong, y)


WAYS = {"original": original, "two attacks": two_attacks, "one trajectory": one_trajectory}


def main(argv=None):
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip_original", action="store_true", help="skip the N^2 way (slow for many tickets)")
    own, rest = p.parse_known_args(argv)
    torch.set_num_threads(own.threads)
    cfg = parse_config(rest, prog="bench/transfer_matrix.py")
    data = build_dataset(cfg)
    tickets, _ = load_tickets(cfg, cfg.pretrained, data.info, torch.device("cpu"))
    models = [t.model for t in tickets]
    loader = list(make_loader(subset(data.val, cfg.n_eval or 100), cfg.test_batch_size, False, cfg))
    images = sum(len(y) for _, y in loader)
    eps = cfg.epsilon / 255
    ways = {n: w for n, w in WAYS.items() if not (n == "original" and own.skip_original)}
    runs = {name: [] for name in ways}
    for _ in range(own.reps):  # interleaved, so slow drifts of a shared machine hit every way alike
        for name, way in ways.items():
            torch.manual_seed(0)
            start = time.perf_counter()
            natural(models, loader)
            way(models, loader, eps)
            runs[name].append(time.perf_counter() - start)
    times = {name: sorted(r)[len(r) // 2] * 100 / images for name, r in runs.items()}
    for name, t in times.items():
        sys.stdout.write(f"{name:>15}: {t:8.2f} s per 100 images (median of {own.reps}; {len(models)} tickets, "
                         f"{images} images, eps {cfg.epsilon:g}/255, {own.threads} thread(s))\n")
    for name, t in times.items():
        if name != "one trajectory":
            sys.stdout.write(f"{name} / one trajectory = {t / times['one trajectory']:.2f}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
