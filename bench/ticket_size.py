"""Size of a ``tickets.py export`` file against the fp32 checkpoints it comes from.

    python bench/ticket_size.py [--arch cResNet18] [--k 0.1] [--width-mult 1] [--init signed_constant]

Builds the network at its init (CIFAR-10 shapes: 3x32x32, 10 classes) with random
scores, writes (1) its state dict (fp32 weights and scores, BN statistics) and
(2) the checkpoint a main.py search writes (plus SGD momentum of the scores and the
config), exports the ticket and checks that its logits equal the model's.
Prints one JSON line of byte counts. The mask costs 1 bit per masked weight and a
signed-constant init 1 sign bit per kept one: about (1 + k) bits per weight.
"""
import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from models import build_model, masked_layers  # noqa: E402
from trainers.ticket_export import export  # noqa: E402
from utils.checkpoint import extract_state_dict, load_checkpoint  # noqa: E402
from utils.config import parse_config  # noqa: E402
from utils.run_dir import config_dict  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cResNet18")
    p.add_argument("--k", type=float, default=0.1)
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--init", default="signed_constant")
    args = p.parse_args(argv)
    cfg = parse_config(["--arch", args.arch, "--prune-rate", str(args.k), "--width-mult", str(args.width_mult),
                        "--init", args.init, "--conv_type", "SubnetConv", "--bn-type", "NonAffineBatchNorm"])
    torch.manual_seed(0)
    model = build_model(cfg, 10).eval()
    scores = [m.scores for m in masked_layers(model)]
    momentum = {i: {"momentum_buffer": torch.randn_like(s)} for i, s in enumerate(scores)}
    n_masked = sum(m.weight.numel() for m in masked_layers(model))
    with tempfile.TemporaryDirectory() as tmp:
        paths = {k: os.path.join(tmp, k + ".pth") for k in ("state_dict", "checkpoint", "ticket")}
        torch.save(model.state_dict(), paths["state_dict"])
        torch.save({"arch": cfg.arch, "prune_rate": args.k, "task": "search", "config": config_dict(cfg),
                    "state_dict": model.state_dict(), "optimizer": {"state": momentum, "param_groups": []}},
                   paths["checkpoint"])
        export(paths["checkpoint"], paths["ticket"])
        x = torch.rand(4, 3, 32, 32)
        twin = build_model(cfg, 10).eval()
        twin.load_state_dict(extract_state_dict(load_checkpoint(paths["ticket"])))
        with torch.no_grad():
            exact = torch.equal(model(x), twin(x))
        sizes = {k: os.path.getsize(v) for k, v in paths.items()}
    out = dict(arch=args.arch, k=args.k, width_mult=args.width_mult, init=args.init, masked_weights=n_masked,
               bytes=sizes, ideal_bytes=round(n_masked * (1 + args.k) / 8),
               bits_per_masked_weight=round(8 * sizes["ticket"] / n_masked, 3), logits_equal=exact)
    sys.stdout.write(json.dumps(out) + "\n")
    return out


if __name__ == "__main__":
    main()
