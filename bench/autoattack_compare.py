"""AutoAttack before/after on the same tickets: torchattacks' port (what this project ran
before) against the reference implementation (pyautoattack, what it runs now).

    python bench/autoattack_compare.py --tickets DIR [--n_eval 60] [--epsilon 8] [--threads 1]

DIR holds tickets of one random network (``<net>_<k>.pth``, as test_trans.py --r2s needs).
Prints one JSON report (and writes it with --out):

* per ticket, AutoAttack standard: robust accuracy (%) and CPU/wall seconds, torchattacks
  (100 steps, 9 target classes, 5000 Square queries: the settings this project gave it)
  and the reference (its own defaults);
* the R2S model of all tickets (expected accuracy over the switch, exact):
  ``torchattacks_rand`` (the shipped code: torchattacks' APGD-CE and APGD-DLR with 20 EOT
  passes, each run on every example, the output with the lower expected accuracy kept;
  inside, torchattacks attacks only examples one draw classifies correctly and returns
  the clean image for the rest), ``reference_cascade`` (pyautoattack's own
  run_standard_evaluation, version rand) and ``reference_every_example`` (this project's
  ``attacks.autoattack.autoattack_rand``); how many outputs are the clean image; and the
  worst case per example over natural, both transfer protocols from every member,
  PGD-20 through the switch, exact EOT-PGD, ensemble PGD, ARC (one pass, seed as given)
  and each AutoAttack rand variant.

torchattacks is not a dependency any more: ``pip install torchattacks`` to run its side
(skipped with a note when missing).
"""
import argparse
import contextlib
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attacks.autoattack import _isolated, autoattack, autoattack_rand, build_reference, num_classes  # noqa: E402
from attacks.randomized import expected_correct  # noqa: E402
from data import build_dataset, make_loader, subset  # noqa: E402
from evaluation import r2s_eval  # noqa: E402
from evaluation.transfer import load_tickets  # noqa: E402
from utils.config import parse_config  # noqa: E402


@contextlib.contextmanager
def timed(out, key):
    cpu, wall = time.process_time(), time.perf_counter()
    yield
    out[key] = {"cpu_s": round(time.process_time() - cpu, 1), "wall_s": round(time.perf_counter() - wall, 1)}


def torchattacks_autoattack(model, x, y, eps, version, seed=0, steps=None, n_queries=None, eot_iter=20):
    """torchattacks.AutoAttack as this project set it up before (reference step count, 9 target
    classes, 20 EOT passes for rand); rand: each APGD member on every example, per example the
    output with the lower expected accuracy."""
    import torchattacks

    with _isolated(model, x):
        n = num_classes(model, x)
        attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version=version, n_classes=n, seed=seed,
                                         verbose=False)
        for m in attack._autoattack.attacks:
            if isinstance(m, (torchattacks.APGD, torchattacks.APGDT, torchattacks.FAB)):
                m.steps = steps or 100
            if isinstance(m, (torchattacks.APGDT, torchattacks.FAB)):
                m.n_target_classes = max(1, min(9, n - 1))
            if isinstance(m, torchattacks.APGD) and version == "rand":
                m.eot_iter = eot_iter
            if isinstance(m, torchattacks.Square):
                m.n_queries = n_queries or 5000
        if version != "rand":
            return attack(x, y).detach()
        outs = [m(x, y).detach() for m in attack._autoattack.attacks]
    best, best_ok = outs[0], expected_correct(model, outs[0], y)
    for out in outs[1:]:
        ok = expected_correct(model, out, y)
        better = (ok < best_ok).view(-1, 1, 1, 1)
        best, best_ok = torch.where(better, out, best), torch.minimum(ok, best_ok)
    return best


def reference_cascade(model, x, y, eps, seed=0, steps=None):
    with _isolated(model, x):
        aa = build_reference(model, eps, "rand", seed, x.device, num_classes(model, x), steps)
        return aa.run_standard_evaluation(x, y, batch_size=len(y))[0].detach()


def accuracy(model, x_adv, y):
    with torch.no_grad():
        return 100.0 * float((model(x_adv).argmax(1) == y).double().mean())


def standard_part(tickets, x, y, eps, have_ta, seed, reference=True, steps=None, n_queries=None):
    out = {}
    for t in tickets:
        row = {"natural": accuracy(t.model, x, y)}
        if reference:
            with timed(row, "reference_cost"):
                x_adv = autoattack(t.model, x, y, eps, "standard", seed, steps, n_queries)
            row["reference"] = accuracy(t.model, x_adv, y)
        if have_ta:
            with timed(row, "torchattacks_cost"):
                row["torchattacks"] = accuracy(t.model, torchattacks_autoattack(t.model, x, y, eps, "standard", seed,
                                                                                steps, n_queries), y)
        out[t.name] = row
        print(t.name, row, file=sys.stderr, flush=True)
    return out


def r2s_part(cfg, tickets, info, x, y, eps, have_ta, seed, steps=None):
    r2s = r2s_eval.r2s_from_tickets(tickets, info, seed).eval()
    r2s.reseed(seed)
    views = [r2s.member(j) for j in range(r2s.num_members)]
    tally = r2s_eval.Tally(len(views), [], 1)
    rows, ok = {}, {"natural": expected_correct(r2s, x, y)}
    with timed(rows, "transfer_cost"):
        transfer = r2s_eval.member_transfer(views, [(x, y)], x.device, cfg, seed)
    ok["transfer (both protocols, every member)"] = r2s_eval.transfer_worst(transfer, tally)
    torch.manual_seed(seed)
    for name, attack in r2s_eval.adaptive_attacks(cfg, seed).items():
        if name == "autoattack_rand":  # measured below, with the other AutoAttack variants
            continue
        with timed(rows, f"{name}_cost"):
            ok[name] = expected_correct(r2s, attack(r2s, x, y), y)
    variants = {"reference_every_example": lambda: autoattack_rand(r2s, x, y, eps, seed=seed, steps=steps),
                "reference_cascade": lambda: reference_cascade(r2s, x, y, eps, seed, steps)}
    if have_ta:
        variants["torchattacks_rand"] = lambda: torchattacks_autoattack(r2s, x, y, eps, "rand", seed, steps)
    for name, run in variants.items():
        with timed(rows, f"{name}_cost"):
            x_adv = run()
        ok[name] = expected_correct(r2s, x_adv, y)
        clean = (x_adv == x).flatten(1).all(1)
        rows[f"{name}_clean_outputs"] = int(clean.sum())
        rows[f"{name}_clean_outputs_with_expected_acc_in_(0,1)"] = int((clean & (ok[name] > 0) & (ok[name] < 1)).sum())
        print(name, rows[f"{name}_cost"], file=sys.stderr, flush=True)
    base = [k for k in ok if k not in variants]
    rows["accuracy"] = {k: 100.0 * float(v.mean()) for k, v in ok.items()}
    common = torch.stack([ok[k] for k in base]).min(0)[0]
    rows["worst_case_without_autoattack"] = 100.0 * float(common.mean())
    rows["worst_case_with"] = {k: 100.0 * float(torch.minimum(common, ok[k]).mean()) for k in variants}
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tickets", required=True)
    ap.add_argument("--n_eval", type=int, default=60)
    ap.add_argument("--epsilon", type=float, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip", choices=("standard", "r2s", "reference-standard"), default=None,
                    help="skip a part (reference-standard: the reference's standard version, e.g. when "
                         "test_trans.py --all_sources --eval_attack autoattack measures it on the same images)")
    ap.add_argument("--aa_steps", type=int, default=None,
                    help="APGD/APGD-T/FAB iterations for both implementations (default: the reference's 100)")
    ap.add_argument("--n_queries", type=int, default=None, help="Square's queries (default: the reference's 5000)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import torchattacks  # noqa: F401
        have_ta = True
    except ImportError:
        have_ta = False
    cfg = parse_config(["--eval_attack", "autoattack", "--epsilon", str(args.epsilon), "--eval_passes", "1",
                        "--seed", str(args.seed), "--workers", "0", "--n_eval", str(args.n_eval)])
    device = torch.device("cpu")
    data = build_dataset(cfg)
    tickets, _ = load_tickets(cfg, args.tickets, data.info, device)
    loader = make_loader(subset(data.val, args.n_eval), args.n_eval, False, cfg, seed=args.seed)
    x, y = next(iter(loader))
    eps = args.epsilon / 255
    report = {"n_eval": len(y), "epsilon": args.epsilon, "threads": args.threads, "seed": args.seed,
              "aa_steps": args.aa_steps or 100, "n_queries": args.n_queries or 5000,
              "torchattacks": have_ta, "tickets": [t.name for t in tickets]}
    if args.skip != "r2s":
        report["r2s"] = r2s_part(cfg, tickets, data.info, x, y, eps, have_ta, args.seed, args.aa_steps)
        print(json.dumps(report["r2s"]), file=sys.stderr, flush=True)
    if args.skip != "standard":
        report["standard"] = standard_part(tickets, x, y, eps, have_ta, args.seed,
                                           args.skip != "reference-standard", args.aa_steps, args.n_queries)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
