"""``tickets.py export``: a checkpoint (or run directory) -> a self-contained ticket file and model card.

A search's ticket is written seeded (``trainers.ticket_seeded``: seed, flags, masks
entropy-coded, BatchNorm statistics) when its kept weights are its seed's random
initialisation; otherwise, or with ``--portable``, in the portable format below.
The portable ticket (``utils.ticket_format``) keeps, per masked layer, the bit-packed mask
and the kept weights in the fewest bits that rebuild them exactly: a signed
constant init (every kept weight +-c) is one sign bit per kept weight plus c,
checked bit for bit; other inits keep the kept weights themselves. Everything
else in the state dict (BatchNorm statistics, dense layers) is stored as is.
Next to it go ``<stem>.card.md`` and ``<stem>.card.json``: dataset, k, natural and
robust accuracy with the protocol and the selection that produced them, the
training budget and the checkpoint's SHA-256.
"""
import hashlib
import json
import os

import torch

from models.conv_type import topk_keep
from models.seeded import to_file
from trainers.ticket_seeded import NotSeeded, encode_seeded, masked_prefixes
from utils.checkpoint import atomic_save, extract_state_dict, load_checkpoint
from utils.errors import UserError
from utils.ticket_format import (FORMAT, SEEDED_VERSION, VERSION, broadcast_keep, pack_bits,
                                 signed_constant_values)

# layer types whose mask is the top-k of |scores| (the mask a ticket stores); Sample/Fixed layers are not
TOPK_TYPES = (None, "SubnetConv", "SubnetConv_filter", "SubnetConv_kernel", "SubnetConv_row")
BUDGET_KEYS = ("epochs", "batch_size", "lr", "lr_policy", "optimizer", "attack_type", "epsilon", "alpha",
               "attack_iters", "n_repeats", "trainer", "low_data", "seed")


def find_checkpoint(path):
    """(checkpoint file, results.json or None) of a checkpoint file or a run directory."""
    if os.path.isdir(path):
        for name in ("model_best.pth", "model_latest.pth"):
            ckpt = os.path.join(path, "checkpoints", name)
            if os.path.isfile(ckpt):
                run = path
                break
        else:
            raise UserError(f"'{path}' holds no checkpoints/model_best.pth or model_latest.pth: "
                            "pass a run directory or a checkpoint file")
    else:
        ckpt = path
        folder = os.path.dirname(os.path.abspath(path))
        run = os.path.dirname(folder) if os.path.basename(folder) == "checkpoints" else folder
    results = os.path.join(run, "results.json")
    return ckpt, results if os.path.isfile(results) else None


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_weights(weight, keep_w):
    """The kept weights as {'encoding': 'signed_constant', constant, signs} when every one is +-c
    bit for bit (c > 0); as 'signed_constant+zeros' (the same plus the positions of kept weights
    that are exactly 0, their sign bit in ``signs``) when a few are 0: the signed-constant init
    draws sign(w) * c and sign(0) = 0; else {'encoding': 'kept', kept}."""
    kept = weight[keep_w]
    nonzero = kept != 0
    if not nonzero.any():
        return {"encoding": "kept", "kept": kept.clone()}
    c = kept[nonzero][0].abs()
    zeros = (~nonzero).nonzero().flatten()
    signs = torch.where(nonzero, kept > 0, ~torch.signbit(kept))  # a zero's bit: +0.0 or -0.0
    rebuilt = signed_constant_values(c, signs, zeros)
    exact = torch.equal(rebuilt, kept) and torch.equal(torch.signbit(rebuilt), torch.signbit(kept))
    if not (c > 0 and exact and zeros.numel() * 64 <= kept.numel()):  # an index costs 64 bits; a value 32
        return {"encoding": "kept", "kept": kept.clone()}
    entry = {"encoding": "signed_constant", "constant": c.clone(), "signs": pack_bits(signs)}
    if zeros.numel():
        entry.update(encoding="signed_constant+zeros", zeros=zeros.to(torch.int64))
    return entry


def encode_layer(weight, scores, k, name):
    """One masked layer's ticket entry; checks that the stored mask selects itself under top-k."""
    keep = topk_keep(scores, k)
    if not torch.equal(topk_keep(keep.to(scores.dtype), k), keep):
        raise UserError(f"layer '{name}': its mask cannot be rebuilt from k={k:g}")
    entry = {"mask": pack_bits(keep), "mask_shape": list(scores.shape), "weight_shape": list(weight.shape),
             "dtype": str(weight.dtype).replace("torch.", "")}
    entry.update(encode_weights(weight, broadcast_keep(keep, weight.shape)))
    return entry


def check_exportable(ckpt, path):
    """(k, config) of a searched/fine-tuned ticket; UserError for what no ticket can hold."""
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    k = ckpt.get("prune_rate", config.get("prune_rate"))
    if not isinstance(k, (int, float)) or not 0 < float(k) <= 1:
        raise UserError(f"'{path}' stores no kept fraction (prune_rate): export needs a checkpoint written "
                        "by main.py (or pass one that stores prune_rate)")
    if config.get("conv_type") == "DenseConv":
        raise UserError(f"'{path}' has no masked layers (conv_type DenseConv): a dense network is not a ticket")
    for key in ("conv_type", "first_layer_type"):
        if config.get(key) not in TOPK_TYPES + ("DenseConv",) * (key == "first_layer_type"):
            raise UserError(f"'{path}': layer type {config[key]} ({key}) has no fixed top-k mask to export; "
                            f"export supports {', '.join(t for t in TOPK_TYPES if t)}")
    return float(k), config


def encode_ticket(ckpt, path):
    """The ticket dict of a loaded checkpoint (no card yet)."""
    k, config = check_exportable(ckpt, path)
    state = extract_state_dict(ckpt, path)
    layers, tensors = {}, {}
    for key, value in state.items():
        prefix = key[:-len("scores")] if key.endswith("scores") else None
        if prefix is not None and prefix + "weight" in state:
            layers[prefix] = encode_layer(state[prefix + "weight"], value, k, prefix.rstrip("."))
    for key, value in state.items():
        if not any(key in (p + "weight", p + "scores") for p in layers):
            tensors[key] = value
    if not layers:
        raise UserError(f"'{path}' has no masked layers (scores): a dense network is not a ticket")
    return {"format": FORMAT, "version": VERSION, "arch": ckpt.get("arch", config.get("arch")), "prune_rate": k,
            "task": ckpt.get("task", config.get("task")), "config": config, "layers": layers,
            "tensors": tensors, "order": list(state)}


def accuracy_of(ckpt, ckpt_path, results):
    """Natural/robust accuracy of the exported model, with the protocol and selection behind them."""
    config = ckpt.get("config") or {}
    latest = os.path.basename(ckpt_path) == "model_latest.pth"
    if results:
        prefix = "last" if latest else "best"
        return {"natural_acc1": results.get(f"{prefix}_natural_acc1"), "robust_acc1": results.get(f"{prefix}_robust_acc1"),
                "model": "last epoch" if latest else f"selected epoch {results.get('best_epoch')}",
                "selection": results.get("selection"), "protocol": results.get("eval_protocol"),
                "source": "results.json"}
    from types import SimpleNamespace
    from utils.provenance import main_protocol
    attack = bool(config.get("attack_type"))
    best = ckpt.get("best_acc1")
    return {"natural_acc1": ckpt.get("natural_acc1_at_best_robustness") if attack else best,
            "robust_acc1": best if attack else None, "model": "as stored in the checkpoint",
            "selection": "best epoch (the checkpoint does not say on which split)",
            "protocol": main_protocol(SimpleNamespace(**config)) if config else None, "source": "checkpoint"}


def weight_encodings(ticket):
    """How the file holds the kept weights: 'seeded' (regenerated), else each layer's encoding."""
    if ticket.get("weights") == "seeded":
        return ["seeded"]
    return sorted({e["encoding"] for e in ticket["layers"].values()})


def model_card(ckpt, ckpt_path, results_path, ticket, n_masked):
    config = ticket["config"]
    results = None
    if results_path:
        with open(results_path) as fh:
            results = json.load(fh)
    encodings = weight_encodings(ticket)
    layout = "seeded" if ticket["version"] == SEEDED_VERSION else "portable"
    return {"dataset": config.get("set"), "arch": ticket["arch"], "width_mult": config.get("width_mult"),
            "k": ticket["prune_rate"], "task": ticket["task"], "init": config.get("init"),
            "conv_type": config.get("conv_type") or "SubnetConv",
            "accuracy": accuracy_of(ckpt, ckpt_path, results),
            "training": dict({k: config.get(k) for k in BUDGET_KEYS},
                             epochs_done=(results or {}).get("epochs_done", ckpt.get("epoch")),
                             train_seconds=(results or {}).get("train_seconds")),
            "checkpoint": {"file": os.path.abspath(ckpt_path), "sha256": sha256(ckpt_path),
                           "bytes": os.path.getsize(ckpt_path)},
            "ticket": {"format": f"{FORMAT} v{ticket['version']} ({layout})", "masked_weights": n_masked,
                       "weight_encodings": encodings}}


def card_markdown(card):
    acc, train = card["accuracy"], card["training"]
    rows = [("dataset", card["dataset"]), ("architecture", f"{card['arch']} (width x{card['width_mult']})"),
            ("k (fraction of weights kept)", card["k"]), ("task", card["task"]),
            ("init / layer type", f"{card['init']} / {card['conv_type']}"),
            ("natural accuracy (%)", acc["natural_acc1"]), ("robust accuracy (%)", acc["robust_acc1"]),
            ("model", acc["model"]), ("selection", acc["selection"]),
            ("robust protocol", json.dumps(acc["protocol"], sort_keys=True)),
            ("training budget", ", ".join(f"{k}={v}" for k, v in train.items() if v is not None)),
            ("checkpoint sha256", card["checkpoint"]["sha256"]),
            ("ticket format", card["ticket"]["format"] + (f"; not seeded: {card['ticket']['not_seeded']}"
                                                          if card["ticket"].get("not_seeded") else "")),
            ("sizes (bytes)", f"ticket {card['ticket'].get('bytes')}, checkpoint {card['checkpoint']['bytes']}")]
    lines = [f"# Ticket card: {card['arch']} on {card['dataset']}, k = {card['k']:g}", "",
             "| field | value |", "|---|---|"]
    lines += [f"| {k} | {str(v).replace('|', '/')} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def verify(ticket_path, ckpt, k, decoded=None):
    """Reload the written ticket (or check ``decoded``, its state dict); every kept weight, mask and
    other tensor must match the checkpoint's."""
    if decoded is None:
        decoded = extract_state_dict(load_checkpoint(ticket_path), ticket_path)
    state = extract_state_dict(ckpt)
    for key, value in decoded.items():
        if key.endswith("weight") and key[:-6] + "scores" in decoded:
            continue  # checked with its scores
        if key.endswith("scores") and key[:-6] + "weight" in decoded:
            keep = topk_keep(state[key], k)
            weight = key[:-6] + "weight"
            kept = broadcast_keep(keep, state[weight].shape)  # a seeded ticket also gives the pruned weights
            same = torch.equal(value.bool(), keep) and torch.equal(decoded[weight] * kept, state[weight] * kept)
        else:
            same = torch.equal(value, state[key])
        if not same:
            raise UserError(f"ticket '{ticket_path}' does not reproduce '{key}'; nothing kept")


def choose_encoding(ckpt, ckpt_path, portable):
    """(ticket dict, why it is not seeded or None): seeded unless ``portable`` or the weights are not the seed's."""
    if portable:
        return encode_ticket(ckpt, ckpt_path), "--portable"
    k, config = check_exportable(ckpt, ckpt_path)
    try:
        return encode_seeded(ckpt, extract_state_dict(ckpt, ckpt_path), k, config, ckpt_path), None
    except NotSeeded as exc:
        return encode_ticket(ckpt, ckpt_path), str(exc)


def export(path, out, portable=False):
    """Write the ticket ``out`` and its card (``<out stem>.card.md`` / ``.card.json``); returns the card.

    Seeded (``models.seeded``) when the checkpoint's kept weights are its seed's random
    initialisation and ``portable`` is false; else portable (``utils.ticket_format``).
    """
    ckpt_path, results_path = find_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    if not isinstance(ckpt, dict):
        raise UserError(f"'{ckpt_path}' holds no checkpoint dict")
    ticket, not_seeded = choose_encoding(ckpt, ckpt_path, portable)
    state = extract_state_dict(ckpt, ckpt_path)
    n_masked = sum(state[p + "weight"].numel() for p in masked_prefixes(state))
    ticket["card"] = model_card(ckpt, ckpt_path, results_path, ticket, n_masked)
    ticket["card"]["ticket"]["not_seeded"] = not_seeded
    atomic_save(to_file(ticket) if ticket["version"] == SEEDED_VERSION else ticket, out)
    try:
        verify(out, ckpt, ticket["prune_rate"])
    except UserError:
        os.unlink(out)
        raise
    card = dict(ticket["card"])
    card["ticket"] = dict(card["ticket"], file=os.path.abspath(out), bytes=os.path.getsize(out))
    stem = os.path.splitext(out)[0]
    with open(stem + ".card.json", "w") as fh:
        json.dump(card, fh, indent=2, sort_keys=True)
    with open(stem + ".card.md", "w") as fh:
        fh.write(card_markdown(card))
    return card
