"""GPU-hours of each paper figure (``experiments/figures.py --profile cifar10``) on one device.

Measures, per architecture, the seconds per image of the steps the figures' runs
are made of (batch ``--batch``, fp32 unless ``--amp``): a search step (scores
train, PGD-7 training attack), a dense adversarial step (weights train, PGD-7;
fine-tuning costs the same), a natural training step, a PGD-20 evaluation batch
(eval mode, every example moved all 20 steps: an upper bound, as early stop only
saves work) and a natural evaluation forward. Then it prices every point of the
cifar10 specs (CIFAR-10: 50,000 training and 10,000 test images):

* training run: epochs x 50,000 x step + validations x 10,000 x (PGD-20 + forward),
  validations at 0-based epochs e with e % val_every == 0 or the last (main.py);
  train_full.py every 10 epochs up to 60, then every val_every;
* transfer matrix: per ticket one PGD-20 pass over the test set, plus tickets^2 forwards;
* R2S: per pass, each member's PGD-20 examples, PGD-20 through the switch and EOT-PGD
  (eot_steps x eot_samples gradient passes), plus forwards of every member on each
  attack's examples (a lower bound once stronger adaptive attacks are added).

    python bench/figure_cost.py --device cuda                     # measure, then price
    python bench/figure_cost.py --device cuda --save costs.json   # keep the measurement
    python bench/figure_cost.py --costs costs.json                # price a saved measurement
"""
import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

N_TRAIN, N_TEST = 50000, 10000
ARCHS = ("cResNet18", "WideResNet32")


def measure_arch(arch, args, device):
    """Seconds per image of each step kind (median over ``--reps``)."""
    import torch
    import torch.nn.functional as F

    from attacks.pgd import pgd
    from models import build_model
    from evaluation.evaluate import autocast
    from trainers.tasks import set_trainable
    from utils.config import parse_config

    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    eps, step = 8 / 255, 2 / 255

    def model(conv):
        cfg = parse_config(["--arch", arch, "--conv_type", conv, "--prune-rate", "0.1"])
        net = build_model(cfg, 10).to(device)
        set_trainable(net, weights=conv == "DenseConv", scores=conv != "DenseConv")
        return net, torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01, momentum=0.9)

    def train_step(net, opt, iters):
        def run():
            net.train()
            with autocast(args.amp, device):
                xa = pgd(net, x, y, eps, step, iters) if iters else x
                loss = F.cross_entropy(net(xa).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    def eval_step(net, iters):
        def run():
            net.eval()
            with autocast(args.amp, device):
                xa = pgd(net, x, y, eps, step, iters) if iters else x
                with torch.no_grad():
                    net(xa)
        return run

    search, dense = model("SubnetConv"), model("DenseConv")
    kinds = {"search": train_step(*search, 7), "dense": train_step(*dense, 7), "natural": train_step(*dense, 0),
             "pgd20": eval_step(search[0], 20), "forward": eval_step(search[0], 0)}
    out = {}
    for kind, fn in kinds.items():
        for _ in range(args.warmup):
            fn()
        times = []
        for _ in range(args.reps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        out[kind] = statistics.median(times) / args.batch
    return out


def validations(epochs, val_every, train_full):
    if train_full:
        return sum(1 for e in range(epochs) if (e % 10 == 0 if e <= 60 else e % val_every == 0) or e == epochs - 1)
    return sum(1 for e in range(epochs) if e % max(1, val_every) == 0 or e == epochs - 1)


def point_seconds(point, cost):
    """Estimated seconds of one point (see module docstring)."""
    cfg = point.config()
    c = cost[cfg.arch if cfg.arch in cost else "cResNet18"]
    n_test = cfg.n_eval or N_TEST
    if point.script == "test_trans.py":
        n = len(point.fields.get("ks", [])) or 8
        if point.result == "transfer_matrix.json":
            return n_test * (n * c["pgd20"] + n * n * c["forward"])
        per_pass = (c["pgd20"] + cfg.eot_steps * cfg.eot_samples * c["pgd20"] / 20) + (n + 3) * n * c["forward"]
        return n_test * (n * c["pgd20"] + cfg.eval_passes * per_pass)
    iters = {"pgd": cfg.attack_iters, "fgsm": 1, "fgsm-rs": 1, None: 0}.get(cfg.attack_type, cfg.attack_iters)
    kind = "search" if point.task == "search" else "dense"
    step = c["natural"] if not iters else c["natural"] + (c[kind] - c["natural"]) * iters / 7
    evals = validations(cfg.epochs, cfg.val_every, point.script == "train_full.py")
    return cfg.epochs * N_TRAIN * step + evals * n_test * (c["pgd20"] + c["forward"])


def price(cost, ablations=True):
    """{figure: (GPU-hours, {stage: GPU-hours}, longest point hours)} for the cifar10 specs."""
    from experiments.points import ABLATIONS, figure_points
    from experiments.spec import FIGURES, load_spec, unique_points

    os.chdir(ROOT)
    out = {}
    for figure in FIGURES:
        spec = load_spec(figure, "cifar10")
        abl = list(ABLATIONS) if ablations and figure == "existence" else []
        points = unique_points(figure_points(figure, spec, "runs/figures/cifar10/" + figure, abl))
        for p in points:
            p.fields.setdefault("ks", spec.get("ks"))
        secs = {p.id: point_seconds(p, cost) for p in points}
        stages = {}
        for p in points:
            stages[p.stage] = stages.get(p.stage, 0) + secs[p.id] / 3600
        out[figure] = (sum(secs.values()) / 3600, stages, max(secs.values()) / 3600)
        if abl:
            main = [p for p in points if p.fields.get("panel") == "main"]
            out[figure + " (no ablations)"] = (sum(secs[p.id] for p in main) / 3600, {}, 0)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--archs", nargs="*", default=list(ARCHS), help="architectures to measure (priced: the rest "
                                                                       "as cResNet18)")
    p.add_argument("--costs", default=None, help="price a saved measurement (JSON) instead of measuring")
    p.add_argument("--save", default=None, help="write the measurement (JSON) here")
    args = p.parse_args(argv)
    if args.costs:
        with open(args.costs) as fh:
            measured = json.load(fh)
    else:
        import torch
        device = torch.device(args.device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        measured = {"device": name, "batch": args.batch, "amp": args.amp, "torch": torch.__version__,
                    "seconds_per_image": {a: measure_arch(a, args, device) for a in args.archs}}
        if args.save:
            with open(args.save, "w") as fh:
                json.dump(measured, fh, indent=2)
    cost = measured["seconds_per_image"]
    sys.stdout.write(f"device {measured['device']}, batch {measured['batch']}, amp {measured['amp']}\n")
    for arch, c in cost.items():
        sys.stdout.write(f"{arch}: " + ", ".join(f"{k} {v * 1e3:.3f} ms/image" for k, v in c.items()) + "\n")
    for figure, (hours, stages, longest) in price(cost).items():
        detail = ", ".join(f"{s} {h:.1f}" for s, h in stages.items())
        sys.stdout.write(f"{figure:<26} {hours:8.1f} GPU-hours" + (f" ({detail}; longest point {longest:.1f} h)"
                                                                   if stages else "") + "\n")
    return measured


if __name__ == "__main__":
    main()
