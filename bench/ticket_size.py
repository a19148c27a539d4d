"""Ticket sizes in bits per masked weight (seeded, portable, fp32) against the entropy bounds, and coding times.

    python bench/ticket_size.py [--arch cResNet18] [--ks 0.01 0.1 0.5] [--width-mult 1] [--init signed_constant]

For each k (fraction kept) it builds the network as ``main.py --seed 0`` does (CIFAR-10
shapes: 3x32x32, 10 classes; its own scores are the random init, BatchNorm statistics
moved by one forward pass in train mode), saves a main.py-style checkpoint, exports it
seeded and ``--portable``, and checks that both give the model's logits exactly. Columns
(bits per masked weight): ``seeded`` (seed + masks coded at each layer's kept fraction +
header: flags, card, fp32 BatchNorm statistics), ``seeded_masks`` (the coded masks alone),
``portable`` (bit-packed masks + one sign bit per kept weight for a signed-constant init,
else the kept weights), ``fp32`` (the masked network's weights as a plain fp32 state dict),
next to H(k) (the seeded bound) and H(k) + k (the portable bound: a sign bit per kept weight).
Times (s): ``encode_s`` / ``decode_s`` code / decode every mask with the ANS coder;
``load_s`` loads the seeded file (regeneration, SHA-256 check, decoding). ``coders``
compares the ANS coder with lzma (-9e) and zstd (-19, if ``zstandard`` is installed) on the
bit-packed masks of all layers: bits per masked weight and seconds to compress.
Prints one JSON line per k and, last, a markdown table.
"""
import argparse
import json
import lzma
import math
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models import build_model, masked_layers  # noqa: E402
from models.conv_type import topk_keep  # noqa: E402
from trainers.ticket_export import export  # noqa: E402
from utils.checkpoint import extract_state_dict, load_checkpoint  # noqa: E402
from utils.config import parse_config  # noqa: E402
from utils.mask_coding import decode_mask, encode_mask  # noqa: E402
from utils.run_dir import config_dict  # noqa: E402


def entropy(p):
    return 0.0 if p in (0.0, 1.0) else -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def searched_model(args, k):
    """(config, model in eval mode) as main.py --seed 0 builds it, BN statistics moved."""
    cfg = parse_config(["--arch", args.arch, "--prune-rate", str(k), "--width-mult", str(args.width_mult),
                        "--init", args.init, "--conv_type", "SubnetConv", "--bn-type", "NonAffineBatchNorm",
                        "--seed", "0"])
    torch.manual_seed(0)
    model = build_model(cfg, 10)
    with torch.no_grad():
        model.train()(torch.rand(8, 3, 32, 32))
    return cfg, model.eval()


def coder_times(masks):
    """(ANS bytes, encode s, decode s) over every layer's mask."""
    start = time.perf_counter()
    coded = [encode_mask(m) for m in masks]
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    for (kept, data), m in zip(coded, masks):
        assert torch.equal(decode_mask(kept, data, tuple(m.shape)), m)
    return sum(len(d) for _, d in coded), encode_s, time.perf_counter() - start


def general_coders(masks, n):
    """{coder: [bits per masked weight, seconds]} of lzma and zstd on the bit-packed masks."""
    packed = np.packbits(np.concatenate([m.reshape(-1).numpy() for m in masks]).astype(np.uint8)).tobytes()
    out = {}
    start = time.perf_counter()
    out["lzma -9e"] = [8 * len(lzma.compress(packed, preset=9 | lzma.PRESET_EXTREME)) / n]
    out["lzma -9e"].append(round(time.perf_counter() - start, 3))
    try:
        import zstandard
    except ImportError:
        return out
    start = time.perf_counter()
    out["zstd -19"] = [8 * len(zstandard.ZstdCompressor(level=19).compress(packed)) / n]
    out["zstd -19"].append(round(time.perf_counter() - start, 3))
    return out


def measure(args, k, tmp):
    cfg, model = searched_model(args, k)
    layers = masked_layers(model)
    n = sum(m.weight.numel() for m in layers)
    masks = [topk_keep(m.scores.detach(), k) for m in layers]
    paths = {name: os.path.join(tmp, f"{name}.pth") for name in ("checkpoint", "fp32", "seeded", "portable")}
    torch.save({"arch": cfg.arch, "prune_rate": k, "task": "search", "config": config_dict(cfg),
                "state_dict": model.state_dict()}, paths["checkpoint"])
    torch.save({key: v for key, v in model.state_dict().items() if not key.endswith("scores")}, paths["fp32"])
    seeded = export(paths["checkpoint"], paths["seeded"])
    export(paths["checkpoint"], paths["portable"], portable=True)
    start = time.perf_counter()
    state = extract_state_dict(load_checkpoint(paths["seeded"]))
    load_s = time.perf_counter() - start
    x = torch.rand(4, 3, 32, 32)
    exact = True
    for name in ("seeded", "portable"):
        twin = build_model(cfg, 10).eval()
        twin.load_state_dict(state if name == "seeded" else extract_state_dict(load_checkpoint(paths[name])))
        with torch.no_grad():
            exact = exact and torch.equal(model(x), twin(x))
    coded, encode_s, decode_s = coder_times(masks)
    bits = {name: round(8 * os.path.getsize(p) / n, 4) for name, p in paths.items()}
    coders = dict(general_coders(masks, n), ans=[8 * coded / n, round(encode_s, 3)])
    return dict(arch=args.arch, width_mult=args.width_mult, init=args.init, k=k, masked_weights=n,
                seeded_bytes=os.path.getsize(paths["seeded"]), seeded_format=seeded["ticket"]["format"],
                bits_per_masked_weight=dict(bits, seeded_masks=round(8 * coded / n, 4)),
                H_k=round(entropy(k), 4), H_k_plus_k=round(entropy(k) + k, 4),
                encode_s=round(encode_s, 3), decode_s=round(decode_s, 3), load_s=round(load_s, 3),
                coders={c: [round(b, 4), s] for c, (b, s) in coders.items()}, logits_equal=exact)


def table(rows):
    head = ("| k | H(k) | seeded | seeded masks | H(k)+k | portable | fp32 | seeded KB | encode s | decode s "
            "| load s | lzma -9e | zstd -19 |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        b, c = r["bits_per_masked_weight"], r["coders"]
        lines.append(f"| {r['k']:g} | {r['H_k']:.4f} | {b['seeded']:.4f} | {b['seeded_masks']:.4f} | "
                     f"{r['H_k_plus_k']:.4f} | {b['portable']:.4f} | {b['fp32']:.2f} | {r['seeded_bytes'] / 1024:.1f} | "
                     f"{r['encode_s']} | {r['decode_s']} | {r['load_s']} | {c['lzma -9e'][0]:.4f} ({c['lzma -9e'][1]} s) | "
                     + (f"{c['zstd -19'][0]:.4f} ({c['zstd -19'][1]} s) |" if "zstd -19" in c else "n/a |"))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cResNet18")
    p.add_argument("--ks", type=float, nargs="+", default=[0.01, 0.1, 0.5], help="fractions kept")
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--init", default="signed_constant")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.ks:
            rows.append(measure(args, k, tmp))
            sys.stdout.write(json.dumps(rows[-1]) + "\n")
    sys.stdout.write(table(rows) + "\n")
    return rows


if __name__ == "__main__":
    main()
