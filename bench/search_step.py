"""Cost of one adversarial search step versus one dense adversarial-training step.

Times, in one process and one run, three steps of the same architecture, batch
and training attack (PGD, uniform random start, ``--iters`` steps of 2/255,
eps 8/255, model in train mode, then one forward/backward and an SGD step):

* ``search``: SubnetConv, scores train, weights frozen (this project's path:
  each layer's top-k mask is computed once per optimiser step and reused by
  every attack iteration; attack iterations take input gradients only);
* ``dense``: DenseConv, weights train (adversarial training of the same net);
* ``naive``: SubnetConv as in the original code: the mask is recomputed by a
  full sort on every forward pass and the attack's ``loss.backward()`` also
  computes (and throws away) score gradients.

Warm-up steps are run first, then ``--reps`` repetitions with the three steps
interleaved (so slow drifts of the machine hit all three alike). It prints the
median seconds per step, the median of the per-repetition ratios
``search/dense`` and ``naive/search`` (with their range and the ratio of the
best times, which a busy machine disturbs least), images per second, and peak
memory: on CUDA ``torch.cuda.max_memory_allocated`` during each kind's warm-up,
less what the kinds built before it hold; on CPU the peak resident set size of
a fresh child process that runs only that kind (``resource.getrusage`` max RSS,
read as VmHWM on Linux), also shown over the size after imports (``--no-memory``
skips those children).

CPU (the goal: ratio <= 1.05 for cResNet18, batch 32, PGD-7)::

    python bench/search_step.py                       # cResNet18, batch 32, PGD-7
    python bench/search_step.py --threads 1 --reps 7  # steadier when other jobs share the cores
    python bench/search_step.py --width-mult 0.25 --reps 3

On a machine whose cores are busy with other work, OpenMP's thread barriers
make multi-threaded timings erratic (seen: 4-40 s for the same step);
``--threads 1`` measures work rather than scheduling.

GPU (one device; the header line states AMP, channels-last and compile)::

    python bench/search_step.py --device cuda --batch 256 --reps 10
    python bench/search_step.py --device cuda --batch 256 --amp bf16 --channels-last
    python bench/search_step.py --device cuda --batch 256 --gpu-matrix --warmup 4   # all of them

``--gpu-matrix`` runs, in one process, fp32, bf16 and fp16 (each channels-last)
and bf16 + channels-last + ``torch.compile``, one report each. ``--compile``
compiles each model with ``trainers.loop.compile_model`` (as ``main.py
--compile``); the attack and the training forward both run the compiled module,
so the warm-up includes compilation (two graph variants per block: attack and
training); raise ``--warmup`` if the first repetitions are still slow.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import build_model  # noqa: E402
from models.conv_type import SubnetConv  # noqa: E402
from evaluation.evaluate import autocast  # noqa: E402
from trainers.loop import compile_model  # noqa: E402
from trainers.tasks import set_trainable  # noqa: E402
from attacks.pgd import pgd, project, random_start  # noqa: E402
from utils.config import parse_config  # noqa: E402

KINDS = ("search", "dense", "naive")
STEP = 2 / 255  # PGD training step, as in training (the original ignores --alpha for pgd)


class _SortMask(torch.autograd.Function):
    """The original's GetSubnet: full sort of |score|, gradient straight through."""

    @staticmethod
    def forward(ctx, scores, k):
        out = scores.clone()
        _, idx = scores.flatten().sort()
        j = int((1 - k) * scores.numel())
        flat = out.flatten()
        flat[idx[:j]] = 0
        flat[idx[j:]] = 1
        return out

    @staticmethod
    def backward(ctx, g):
        return g, None


class NaiveSubnetConv(SubnetConv):
    """SubnetConv without any caching: a sort on every forward pass."""

    def masked_weight(self):
        return self.weight * _SortMask.apply(self.scores.abs(), self.prune_rate)


def naive_pgd(model, x, y, epsilon, step, iters):
    """The original's training PGD: ``loss.backward()`` fills every parameter's .grad too."""
    delta = random_start(x, epsilon).requires_grad_(True)
    for _ in range(iters):
        loss = F.cross_entropy(model(x + delta).float(), y)
        loss.backward()
        with torch.no_grad():
            delta.copy_(project(x, delta + step * delta.grad.sign(), epsilon))
        delta.grad.zero_()
    return (x + delta).detach()


def build(kind, args, device):
    """Model and optimiser for one step kind; every kind starts from the same weights."""
    conv = "DenseConv" if kind == "dense" else "SubnetConv"
    cfg = parse_config(["--arch", args.arch, "--width-mult", str(args.width_mult), "--conv_type", conv,
                        "--prune-rate", str(args.prune_rate)])
    torch.manual_seed(0)
    model = build_model(cfg, 10)
    set_trainable(model, weights=kind == "dense", scores=kind != "dense")
    if kind == "naive":
        for m in model.modules():
            if isinstance(m, SubnetConv):
                m.__class__ = NaiveSubnetConv
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    net = compile_model(model) if args.compile else model
    return net, opt


def make_step(kind, net, opt, args, device):
    """One training step: attack (train mode), forward, backward, optimiser step."""
    eps = args.epsilon / 255
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" and device.type == "cuda" else None

    def step(x, y):
        net.train()
        with autocast(args.amp, device):
            if kind == "naive":
                x_adv = naive_pgd(net, x, y, eps, STEP, args.iters)
            else:
                x_adv = pgd(net, x, y, eps, STEP, args.iters)
            loss = F.cross_entropy(net(x_adv).float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, x, y, device):
    """(wall seconds, this process's CPU seconds) of one step."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    step(x, y)
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def batch(args, device):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    x = x.to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device)


def run(args, device, kinds):
    """Per-kind lists of (wall, CPU) seconds per step, and CUDA peak bytes; interleaved."""
    x, y = batch(args, device)
    steps, times, peak = {}, {k: [] for k in kinds}, {}
    for kind in kinds:
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0  # earlier kinds' models
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        net, opt = build(kind, args, device)
        steps[kind] = make_step(kind, net, opt, args, device)
        for _ in range(args.warmup):
            steps[kind](x, y)
        if device.type == "cuda":
            peak[kind] = torch.cuda.max_memory_allocated(device) - base
    for _ in range(args.reps):
        for kind in kinds:
            times[kind].append(timed(steps[kind], x, y, device))
    return times, peak


def child_peak_rss(argv, kind):
    """(peak RSS, RSS after imports) in bytes of a fresh process that only builds and runs ``kind``."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--only", kind, "--reps", "1",
           "--warmup", "1", "--no-memory"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    return child["max_rss"], child["start_rss"]


def proc_status_bytes(field):
    """A memory field of /proc/self/status (Linux) in bytes, or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


def max_rss_bytes():
    """Peak resident set size of this process in bytes.

    Linux: VmHWM from /proc (the ``ru_maxrss`` of a child started by fork+exec
    also counts the parent's peak from before the exec); elsewhere ru_maxrss.
    """
    peak = proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def ratio_line(num, den):
    """Median of per-repetition ratios, their range, and the ratio of the best times."""
    ratios = [a / b for a, b in zip(num, den)]
    return (f"{statistics.median(ratios):.3f} (per rep {min(ratios):.3f}..{max(ratios):.3f}; "
            f"best times {min(num) / min(den):.3f})")


def report(args, device, times, peak):
    wall = {k: [t[0] for t in v] for k, v in times.items()}
    cpu = {k: [t[1] for t in v] for k, v in times.items()}
    w = sys.stdout.write
    w(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
      f"{torch.get_num_threads()} threads), torch {torch.__version__}\n")
    w(f"{args.arch} width {args.width_mult}, batch {args.batch}, PGD-{args.iters} step 2/255 eps "
      f"{args.epsilon:g}/255, kept k={args.prune_rate}, amp {args.amp}, channels_last "
      f"{args.channels_last}, compile {args.compile}; {args.warmup} warm-up, {args.reps} reps\n")
    for kind in times:
        med = statistics.median(wall[kind])
        mem = peak.get(kind)
        if isinstance(mem, tuple):  # CPU: (peak RSS, RSS after imports) of a child process
            mem_s = f"{mem[0] / 2**20:.0f} MiB ({(mem[0] - mem[1]) / 2**20:+.0f} MiB over imports)"
        else:
            mem_s = "n/a" if mem is None else f"{mem / 2**20:.0f} MiB"
        label = "peak CUDA alloc (own model and step)" if device.type == "cuda" else "peak RSS (own process)"
        w(f"{kind:>6}: median {med:.3f} s/step  {args.batch / med:8.1f} images/s  {label} {mem_s}\n")
    w(f"median ratio search/dense = {ratio_line(wall['search'], wall['dense'])}  goal <= 1.05\n")
    if "naive" in times:
        w(f"median speed-up vs naive (naive/search) = {ratio_line(wall['naive'], wall['search'])}\n")
    if device.type != "cuda":
        # CPU seconds count work done, not time spent waiting for cores other jobs hold
        naive = f"; naive/search = {ratio_line(cpu['naive'], cpu['search'])}" if "naive" in times else ""
        w(f"CPU-time ratio search/dense = {ratio_line(cpu['search'], cpu['dense'])}{naive}\n")
        w(f"peak RSS of this process (all kinds timed) {max_rss_bytes() / 2**20:.0f} MiB\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cResNet18")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=7, help="PGD steps of the training attack")
    p.add_argument("--epsilon", type=float, default=8, help="L-inf radius in 0-255 units")
    p.add_argument("--prune-rate", type=float, default=0.1, help="k, fraction of weights kept")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="autocast (CUDA only)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op CPU threads (default: torch's); 1 is steadier on a busy shared machine")
    p.add_argument("--no-memory", action="store_true", help="CPU: skip the per-kind peak-RSS child processes")
    p.add_argument("--no-naive", action="store_true", help="time search and dense only (the naive step is slow)")
    p.add_argument("--gpu-matrix", action="store_true",
                   help="CUDA: report fp32, bf16+channels-last, fp16+channels-last and bf16+channels-last+compile")
    p.add_argument("--only", choices=KINDS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def kinds_of(args):
    return KINDS[:2] if args.no_naive else KINDS


GPU_MATRIX = (("none", False, False), ("bf16", True, False), ("fp16", True, False), ("bf16", True, True))


def gpu_matrix(args, device):
    """One full report per (amp, channels_last, compile) setting, in one process."""
    for amp, channels_last, compiled in GPU_MATRIX:
        setting = argparse.Namespace(**dict(vars(args), amp=amp, channels_last=channels_last, compile=compiled))
        times, peak = run(setting, device, kinds_of(setting))
        report(setting, device, times, peak)
        torch.cuda.empty_cache()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only:
        start = proc_status_bytes("VmRSS") or 0  # torch and the project imported, nothing built
        run(args, device, (args.only,))
        sys.stdout.write(json.dumps({"max_rss": max_rss_bytes(), "start_rss": start}) + "\n")
        return
    if args.gpu_matrix and device.type == "cuda":
        gpu_matrix(args, device)
        return
    times, peak = run(args, device, kinds_of(args))
    if device.type != "cuda" and not args.no_memory:
        peak = {kind: child_peak_rss(argv, kind) for kind in kinds_of(args)}
    report(args, device, times, peak)


if __name__ == "__main__":
    main()
