"""Seeded tickets and R2S bundles (``tickets.py export`` / ``tickets.py bundle``): the writing side.

A ticket whose kept weights are its search's random initialisation (an RST search:
not ft_*, whose weights trained, nor an RTT, drawn from a trained network) is written
as the seed and flags that regenerate its network (``models.seeded``), its masks
entropy-coded at each layer's kept fraction (``utils.mask_coding``) and the tensors the
seed does not give back (BatchNorm running statistics, fp32 as the run kept them).
That is found out, not assumed: the network is regenerated here and every kept
weight compared bit for bit; any difference means the portable format.
"""
import os

import torch

from models.conv_type import topk_keep
from models.seeded import decode_bundle, network_digest, network_record, regenerate, regenerated_keys, to_file
from utils.checkpoint import atomic_save, extract_state_dict, load_checkpoint
from utils.errors import UserError
from utils.mask_coding import CODER, coder_version, encode_mask, masks_digest
from utils.ticket_format import BUNDLE_FORMAT, FORMAT, SEEDED_VERSION, broadcast_keep, pack_tensors

BUNDLE_VERSION = 1
# image sides tried when the flags do not fix the shapes (only Conv*/VGG/FC weights depend on it)
IMAGE_SIDES = (32, 28, 8, 64, 224, 16, 96)


class NotSeeded(Exception):
    """Why a checkpoint cannot be written seeded (the portable format is used instead)."""


def masked_prefixes(state):
    return [k[:-len("scores")] for k in state if k.endswith("scores") and k[:-len("scores")] + "weight" in state]


def build_candidates(ckpt, config, state):
    """Possible {num_classes, in_channels, image_size} of the run (the model's shapes decide)."""
    shaped = [v for k, v in state.items() if v.dim() >= 2 and not k.endswith("scores")]
    if not shaped:
        raise NotSeeded("no weight tensors")
    norm = ckpt.get("normalization") if isinstance(ckpt.get("normalization"), dict) else {}
    channels = len(norm["mean"]) if norm.get("mean") else shaped[0].shape[1]
    classes = config.get("num_classes") or shaped[-1].shape[0]
    sides = [config["image_size"]] if config.get("image_size") else []
    for side in sides + [s for s in IMAGE_SIDES if s not in sides]:
        yield {"num_classes": int(classes), "in_channels": int(channels), "image_size": int(side)}


def regenerate_like(ckpt, config, state, k):
    """(build, regenerated state) whose keys and shapes are the checkpoint's; NotSeeded if none."""
    seed = config.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise NotSeeded("the checkpoint records no integer --seed")
    for build in build_candidates(ckpt, config, state):
        build["prune_rate"] = float(config.get("prune_rate") or k)
        try:
            regen = regenerate(config, seed, build)
        except (UserError, RuntimeError, ValueError, KeyError) as exc:
            raise NotSeeded(f"its network cannot be rebuilt ({type(exc).__name__}: {str(exc)[:80]})") from None
        if list(regen) == list(state) and all(regen[n].shape == state[n].shape for n in state):
            return build, regen
    raise NotSeeded("no network rebuilt from its flags has its tensor shapes")


def split_state(state, regen, k, what, stored_names=()):
    """(keep masks {prefix: bool}, stored tensors) of a seedable state dict: stored are the tensors
    that differ from the regenerated network (BatchNorm running statistics) and ``stored_names``
    (a bundle stores what its first member stores). Masked weights count on their kept entries."""
    masks = {}
    for prefix in masked_prefixes(state):
        keep = topk_keep(state[prefix + "scores"], k)
        if not torch.equal(topk_keep(keep.to(state[prefix + "scores"].dtype), k), keep):
            raise UserError(f"{what}: layer '{prefix.rstrip('.')}': its mask cannot be rebuilt from k={k:g}")
        w, r = state[prefix + "weight"], regen[prefix + "weight"]
        kept = broadcast_keep(keep, w.shape)
        if w.dtype != r.dtype or not torch.equal(w[kept], r[kept]):
            raise NotSeeded(f"the kept weights of '{prefix.rstrip('.')}' are not the random initialisation "
                            "of its seed (trained weights: ft_* or an RTT?)")
        masks[prefix] = keep
    if not masks:
        raise UserError(f"{what} has no masked layers (scores): a dense network is not a ticket")
    skip = {p + "scores" for p in masks}
    weights = {p + "weight" for p in masks}
    given = set(stored_names)

    def regenerates(n):
        return n not in given and (n in weights or (state[n].dtype == regen[n].dtype and torch.equal(state[n], regen[n])))
    return masks, {n: v for n, v in state.items() if n not in skip and not regenerates(n)}


def encode_member(masks, stored, k, ckpt, config):
    """One seeded member: k, flags, masks coded into one uint8 tensor, stored tensors packed (no network)."""
    layers, coded = [], []
    for prefix, keep in masks.items():
        kept, data = encode_mask(keep.cpu())
        layers.append([prefix, kept, len(data)])
        coded.append(data)
    packed = pack_tensors(stored)
    return {"arch": ckpt.get("arch", config.get("arch")), "prune_rate": k, "task": ckpt.get("task", config.get("task")),
            "config": config, "coder": CODER, "coder_version": coder_version(), "masks": layers,
            "coded": torch.frombuffer(bytearray(b"".join(coded)), dtype=torch.uint8),
            "masks_sha256": masks_digest(list(masks.values())), "layout": packed["layout"], "tensors": packed["data"]}


def encode_seeded(ckpt, state, k, config, path):
    """The seeded ticket dict of a checkpoint (no card yet); NotSeeded when it has to be portable."""
    build, regen = regenerate_like(ckpt, config, state, k)
    masks, stored = split_state(state, regen, k, f"'{path}'")
    ticket = {"format": FORMAT, "version": SEEDED_VERSION, "weights": "seeded"}
    ticket.update(encode_member(masks, stored, k, ckpt, config))
    ticket["network"] = network_record(config["seed"], build, regen, stored)
    return ticket


def bundle_member(ckpt, path, first):
    """(member dict, network record) of one bundle input; UserError naming it if its network is not ``first``'s."""
    from trainers.ticket_export import check_exportable
    k, config = check_exportable(ckpt, path)
    state = extract_state_dict(ckpt, path)
    try:
        build, regen = regenerate_like(ckpt, config, state, k)
        masks, stored = split_state(state, regen, k, f"'{path}'", () if first is None else first["stored"])
    except NotSeeded as exc:
        raise UserError(f"'{path}' cannot join a bundle: {exc}") from None
    if first is None:
        first = dict(network_record(config["seed"], build, regen, stored), config=config, stored=list(stored))
    elif network_digest(regen, regenerated_keys(regen, first["stored"]))[0] != first["sha256"]:
        facts = [f"{key} {config.get(key)} vs {first['config'].get(key)}" for key in
                 ("seed", "arch", "width_mult", "init", "conv_type", "scale_fan")
                 if config.get(key) != first["config"].get(key)]
        raise UserError(f"'{path}' was searched in another random network than the bundle's first ticket "
                        f"({'; '.join(facts) or 'other weights'}); a bundle holds tickets of one network")
    return encode_member(masks, stored, k, ckpt, config), first


def member_names(paths):
    """Each input's label in the bundle (its file or folder name; '#i' added to repeats)."""
    names = [os.path.basename(os.path.normpath(p)) for p in paths]
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def bundle(paths, out):
    """Write the bundle of ticket files, checkpoints or run directories that share their random network
    to ``out``, check that every member decodes to its input, and return a summary dict."""
    from trainers.ticket_export import find_checkpoint, verify
    members, network, inputs = [], None, []
    for path, name in zip(paths, member_names(paths)):
        ckpt_path = find_checkpoint(path)[0]
        ckpt = load_checkpoint(ckpt_path)
        if not isinstance(ckpt, dict):
            raise UserError(f"'{ckpt_path}' holds no checkpoint dict")
        member, network = bundle_member(ckpt, ckpt_path, network)
        member["name"] = name
        members.append(member)
        inputs.append((ckpt_path, ckpt, member["prune_rate"]))
    atomic_save(to_file({"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "arch": members[0]["arch"],
                         "network": network, "members": [to_file(m) for m in members]}), out)
    try:
        for (ckpt_path, ckpt, k), (_, decoded) in zip(inputs, decode_bundle(load_checkpoint(out), out)):
            verify(out, ckpt, k, decoded=decoded["state_dict"])
    except UserError:
        os.unlink(out)
        raise
    return {"members": len(members), "seed": network["seed"], "bytes": os.path.getsize(out),
            "ticket_bytes": sum(os.path.getsize(p) for p, _, _ in inputs)}
