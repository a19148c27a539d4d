"""Cost of one whole epoch of search versus one epoch of dense adversarial training.

An epoch with the paper's defaults is a training pass with PGD-7 examples and,
with ``val_every`` 1, a validation pass: natural accuracy and PGD-20 (step
2/255, per-example early stop) over the validation set. In one process this
bench times, for the same data, batches and attacks:

* ``search``: SubnetConv, scores train, weights frozen (``main.py --task search``);
* ``dense``: DenseConv, weights train (adversarial training of the same network);

and each validation twice, with ``attacks.pgd.pgd20(..., compact=False)`` and
``compact=True`` (the early-stopped PGD that drops finished examples from the
batch). Both validations of a model start
from the same RNG state, so their accuracies must be identical (printed).

Validation cost depends on how many examples PGD-20 fools early, so both
models are first trained (untimed) for ``--warm-epochs`` epochs of PGD-1
adversarial training from the same seed: a fresh network is fooled at step 0
everywhere and would measure nothing, and a network trained long on Digits is
fooled almost nowhere. With the defaults the search model's PGD-20 accuracy is
about 50-75 % at the timed validations (the paper's CIFAR-10 tickets: about
50 %); the dense one learns faster (about 90 %), so its validation does more
work: the printed share fooled says how much each validation could skip. Then ``--reps`` repetitions each time
one epoch of both kinds (order alternating between repetitions, so slow drifts
of a shared machine hit both alike) and report medians, per-repetition ranges
and CPU-time ratios.

Prints ``epoch search/dense = R`` (train + validation, validation compacted when
available; goal <= 1.05), the share of the search epoch spent validating before
and after compaction, ``validation speed-up = S`` (uncompacted / compacted, same
model, same process) and images/s.

    python bench/run_epoch.py --threads 1                 # Digits, cResNet18 width 0.25, batch 64
    python bench/run_epoch.py --threads 1 --n-train 256 --n-eval 128 --reps 1 --warm-epochs 1  # quick
    python bench/run_epoch.py --device cuda --batch 256 --width-mult 1 --amp bf16 --channels-last
"""
import argparse
import functools
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attacks.pgd import pgd20  # noqa: E402
from data import build_dataset, make_loader, subset  # noqa: E402
from models import build_model  # noqa: E402
from evaluation.evaluate import evaluate  # noqa: E402
from trainers.optim import build_criterion, build_optimizer  # noqa: E402
from trainers.tasks import set_trainable  # noqa: E402
from trainers.train import train_epoch  # noqa: E402
from utils.config import parse_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "config_rst", "demo-digits.yaml")
KINDS = ("search", "dense")
SEED = 0


def config(args, kind, iters):
    """The run's config: the demo preset with the bench's overrides (PGD-``iters`` training)."""
    argv = ["--config", args.config, "--set", args.set, "--data", args.data, "--arch", args.arch,
            "--width-mult", str(args.width_mult), "--prune-rate", str(args.prune_rate),
            "--conv_type", "DenseConv" if kind == "dense" else "SubnetConv", "--attack_type", "pgd",
            "--attack_iters", str(iters), "--epsilon", str(args.epsilon), "--batch_size", str(args.batch),
            "--val_every", "1", "--workers", "0", "--seed", str(SEED), "--amp", args.amp]
    argv += ["--test_batch_size", str(args.test_batch)] if args.test_batch else []  # else batch // 2, as main.py
    return parse_config(argv + (["--channels_last"] if args.channels_last else []))


def build(args, kind, data, device):
    """Model, optimiser and criterion of one kind; both kinds start from the same seed."""
    cfg = config(args, kind, args.iters)
    torch.manual_seed(SEED)
    info = data.info
    model = build_model(cfg, info.num_classes, info.in_channels, info.image_size, info.mean, info.std).to(device)
    if args.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    set_trainable(model, weights=kind == "dense", scores=kind == "search")
    return cfg, model, build_optimizer(cfg, model), build_criterion(cfg)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def train(run, data, device, epoch, cfg=None):
    """One training epoch of ``run`` = (cfg, model, optimiser, criterion); same data order for both kinds."""
    cfg = cfg or run[0]
    _, model, opt, crit = run
    torch.manual_seed(SEED + epoch)  # the Digits train shift draws from the global RNG
    loader = make_loader(data.train, cfg.batch_size, True, cfg, epoch=epoch, seed=SEED)
    out = train_epoch(model, loader, opt, crit, cfg, device, epoch, progress=False)
    sync(device)
    return out


def validate(run, data, device, compact):
    """Natural + PGD-20 accuracy as the training loop's validation computes them."""
    cfg, model = run[0], run[1]
    loader = make_loader(data.val, cfg.test_batch_size, False, cfg, seed=SEED)
    attack = functools.partial(pgd20, epsilon=cfg.epsilon / 255, compact=compact)
    torch.manual_seed(SEED + 1)  # the same PGD random starts in both modes
    common = dict(amp=cfg.amp, channels_last=cfg.channels_last)
    natural = evaluate(model, loader, device, **common)
    robust = evaluate(model, loader, device, attack=attack, **common)
    sync(device)
    return natural["acc1"], robust["acc1"]


def measure(args, data, device):
    """Per kind: lists of train and validation timings (wall, CPU) and accuracies."""
    modes = (False, True)
    runs = {kind: build(args, kind, data, device) for kind in KINDS}
    warm_cfg = {kind: config(args, kind, args.warm_iters) for kind in KINDS}
    for epoch in range(args.warm_epochs):
        for kind in KINDS:
            train(runs[kind], data, device, epoch, cfg=warm_cfg[kind])
    res = {kind: {"train": [], "val": {m: [] for m in modes}, "acc": {m: [] for m in modes}} for kind in KINDS}
    for rep in range(args.reps):
        epoch = args.warm_epochs + rep
        for kind in (KINDS if rep % 2 == 0 else KINDS[::-1]):
            _, wall, cpu = timed(lambda: train(runs[kind], data, device, epoch))
            res[kind]["train"].append((wall, cpu))
            for mode in (modes if rep % 2 == 0 else modes[::-1]):
                acc, wall, cpu = timed(lambda: validate(runs[kind], data, device, mode))
                res[kind]["val"][mode].append((wall, cpu))
                res[kind]["acc"][mode].append(acc)
    return res, modes


def spread(values):
    """'median (per rep lo..hi)'."""
    return f"{statistics.median(values):.3f} (per rep {min(values):.3f}..{max(values):.3f})"


def col(pairs, i):
    return [p[i] for p in pairs]


def epoch_times(r, mode, i):
    """Per-repetition epoch seconds (train + validation in ``mode``); i = 0 wall, 1 CPU."""
    return [t[i] + v[i] for t, v in zip(r["train"], r["val"][mode])]


def kind_line(kind, r, modes, n_train, n_val):
    tr = statistics.median(col(r["train"], 0))
    parts = [f"{kind:>6}: train {tr:.2f} s/epoch ({n_train / tr:.1f} images/s)"]
    for mode in modes:
        v = statistics.median(col(r["val"][mode], 0))
        label = "compacted" if mode else "validation uncompacted"
        parts.append(f"{label} {v:.2f} s ({n_val / v:.1f} images/s)")
    nat, rob = r["acc"][modes[-1]][-1]
    same = all(r["acc"][m] == r["acc"][modes[0]] for m in modes)
    tail = f"; last natural {nat:.2f}% PGD-20 {rob:.2f}%, accuracies identical in both modes: {'yes' if same else 'NO'}"
    return ", ".join(parts) + tail


def header(args, device, n_train, n_val):
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    val_batch = args.test_batch or max(1, args.batch // 2)
    return (f"device {device} ({name}, {torch.get_num_threads()} threads), torch {torch.__version__}\n"
            f"{args.arch} width {args.width_mult}, {args.set}: {n_train} train / {n_val} val images, batch "
            f"{args.batch} (val {val_batch}), training PGD-{args.iters} step 2/255, validation natural + "
            f"PGD-20 step 2/255 early stop, eps {args.epsilon:g}/255, k={args.prune_rate}, amp {args.amp}, "
            f"channels_last {args.channels_last}; warm-up {args.warm_epochs} epochs PGD-{args.warm_iters}; "
            f"{args.reps} reps\n")


def report(args, device, res, modes, n_train, n_val):
    w = sys.stdout.write
    w(header(args, device, n_train, n_val))
    for kind in KINDS:
        w(kind_line(kind, res[kind], modes, n_train, n_val) + "\n")
    final = modes[-1]
    s, d = res["search"], res["dense"]
    for i, what in ((0, "epoch"), (1, "CPU-time epoch")):
        ratios = [a / b for a, b in zip(epoch_times(s, final, i), epoch_times(d, final, i))]
        goal = "  goal <= 1.05" if i == 0 else ""
        w(f"{what} search/dense = {spread(ratios)}{goal}  [train + validation"
          ", compacted]\n")
    train_ratio = [a / b for a, b in zip(col(s["train"], 0), col(d["train"], 0))]
    w(f"train-only search/dense = {spread(train_ratio)}\n")
    shares = []
    for mode in modes:
        sh = [v / e for v, e in zip(col(s["val"][mode], 0), epoch_times(s, mode, 0))]
        shares.append(f"{statistics.median(sh) * 100:.0f}% {'after' if mode else 'before'} compaction")
    w(f"validation share of the search epoch: {', '.join(shares)}\n")
    for kind in KINDS:
        sp = [a / b for a, b in zip(col(res[kind]["val"][False], 0), col(res[kind]["val"][True], 0))]
        label = "validation speed-up" if kind == "search" else "validation speed-up (dense model)"
        w(f"{label} = {spread(sp)}\n")
    for kind in KINDS:
        fooled = ", ".join(f"{100 - rob:.1f}%" for _, rob in res[kind]["acc"][final])
        w(f"{kind}: PGD-20 fools {fooled} of the validation examples (per rep; these stop early)\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=DEMO, help="base preset (default: the Digits demo)")
    p.add_argument("--set", default="Digits")
    p.add_argument("--data", default="datasets")
    p.add_argument("--arch", default="cResNet18")
    p.add_argument("--width-mult", type=float, default=0.25)
    p.add_argument("--prune-rate", type=float, default=0.3, help="k, fraction of weights kept")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--test-batch", type=int, default=None,
                   help="validation batch (default: --batch // 2, as main.py)")
    p.add_argument("--iters", type=int, default=7, help="PGD steps of the training attack")
    p.add_argument("--epsilon", type=float, default=8, help="L-inf radius in 0-255 units")
    p.add_argument("--warm-epochs", type=int, default=1, help="untimed PGD training before timing")
    p.add_argument("--warm-iters", type=int, default=1, help="PGD steps of the warm-up training attack")
    p.add_argument("--reps", type=int, default=2, help="timed epochs per kind")
    p.add_argument("--n-train", type=int, default=None, help="use the first N training images")
    p.add_argument("--n-eval", type=int, default=None, help="use the first N validation images")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="autocast (CUDA only)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default: torch's)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = build_dataset(config(args, "search", args.iters))
    data.train, data.val = subset(data.train, args.n_train), subset(data.val, args.n_eval)
    res, modes = measure(args, data, device)
    report(args, device, res, modes, len(data.train), len(data.val))


if __name__ == "__main__":
    main()
