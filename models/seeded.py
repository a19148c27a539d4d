"""Seeded tickets: the random network of a search, regenerated from its seed.

A search never changes its network's weights, so they are a function of the run's
flags and ``--seed``: ``trainers.loop.prepare`` calls ``torch.manual_seed(seed)`` (in
``seed_all``) and then ``build_model`` on the CPU, before anything else draws from
torch's generator (the dataset is built between two identical seedings). Here the
same two steps run under ``torch.random.fork_rng``, so the caller's random state is
untouched. Whether another torch (or platform) draws the same numbers is checked,
not assumed: the ticket stores the SHA-256 of every regenerated tensor, and a
mismatch is a one-line error that names the first tensor that differs and the
``--portable`` export, whose file holds the kept weights themselves.

A seeded member (one ticket) is: its k, flags and card; per masked layer the keep
mask entropy-coded at the layer's kept fraction (``utils.mask_coding``); and the
tensors the seed does not give back (BatchNorm running statistics, which a search
updates, in their own dtype, fp32 for ours). ``tickets.py bundle`` writes one network
and N members (an R2S model's tickets).
"""
import hashlib
from collections import OrderedDict

import torch

from models import build_model
from utils.errors import UserError
from utils.mask_coding import CODER, coder_version, decode_mask, masks_digest
from utils.ticket_format import json_tensor, tensor_json, unpack_tensors

GENERATOR = "torch.manual_seed(seed) then build_model on the CPU default generator (trainers.loop.prepare)"
DEVICE = "cpu"  # trainers.loop.prepare builds the model on the CPU, then moves it
# a member's JSON-able fields, written as one zlib-compressed JSON header (``to_file``)
HEADER_FIELDS = ("config", "card", "coder", "coder_version", "masks", "masks_sha256", "layout", "network")


def build_namespace(config):
    """The parser's defaults overlaid with a run's stored flags (what ``build_model`` reads)."""
    from utils.config import build_parser
    cfg = build_parser().parse_args([])
    for key, value in (config or {}).items():
        setattr(cfg, key, value)
    return cfg


def regenerate(config, seed, build):
    """The state dict (CPU) of the network ``main.py --seed seed`` builds for these flags.

    ``build``: {"num_classes", "in_channels", "image_size", "prune_rate"} as the run built it.
    """
    cfg = build_namespace(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = build_model(cfg, int(build["num_classes"]), int(build["in_channels"]), int(build["image_size"]),
                            prune_rate=float(build["prune_rate"]))
    return OrderedDict((k, v.detach()) for k, v in model.state_dict().items())


def tensor_digest(t):
    """SHA-256 (hex) of a tensor's dtype, shape and bytes (C order, whatever its memory format)."""
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def network_digest(state, keys):
    """(SHA-256 hex of the named tensors in order, each one's first 16 hex digits joined by spaces)."""
    own = [tensor_digest(state[k]) for k in keys]
    whole = hashlib.sha256("".join(f"{k}:{d}" for k, d in zip(keys, own)).encode()).hexdigest()
    return whole, " ".join(d[:16] for d in own)


def regenerated_keys(state, stored):
    """The state-dict keys a seeded file takes from the regenerated network: all but the scores of
    masked layers (the masks replace them) and the ``stored`` names."""
    stored = set(stored)
    return [k for k in state if k not in stored and not (k.endswith("scores") and k[:-6] + "weight" in state)]


def generator_facts():
    return {"torch": str(torch.__version__), "device": DEVICE, "how": GENERATOR}


def network_record(seed, build, state, stored):
    """What a seeded file stores about its random network (see the module docstring)."""
    whole, each = network_digest(state, regenerated_keys(state, stored))
    return {"seed": int(seed), "build": dict(build), "generator": generator_facts(), "sha256": whole,
            "tensor_sha256": each}


def regenerate_checked(network, config, stored, path):
    """The regenerated state dict; UserError (one line) if it is not the network the file was written from."""
    seed = network["seed"]
    state = regenerate(config, seed, network["build"])
    keys = regenerated_keys(state, stored)
    whole, each = network_digest(state, keys)
    if whole != network["sha256"]:
        saved = network["tensor_sha256"].split()
        first = next((k for k, a, b in zip(keys, each.split(), saved) if a != b), "the list of tensors")
        made = network.get("generator", {})
        raise UserError(
            f"seeded ticket '{path}': the network regenerated from seed {seed} is not the one it was exported from "
            f"(first difference: {first}; written with torch {made.get('torch')} on {made.get('device')}, "
            f"regenerated with torch {torch.__version__} on {DEVICE}); this generator draws other weights: "
            "export the checkpoint with 'tickets.py export CKPT --portable --out FILE', which loads everywhere")
    return state


def decode_masks(member, state, path):
    """{prefix: bool keep mask} of a member: each layer's coded bytes from the shared uint8 tensor."""
    if member.get("coder", CODER) != CODER:
        raise UserError(f"seeded ticket '{path}' was coded with '{member.get('coder')}'; this code reads '{CODER}'")
    coded, start, masks = member["coded"].numpy().tobytes(), 0, OrderedDict()
    for prefix, kept, size in member["masks"]:
        scores = state.get(prefix + "scores")
        if scores is None:
            raise UserError(f"seeded ticket '{path}': the network has no masked layer '{prefix.rstrip('.')}'")
        masks[prefix] = decode_mask(int(kept), coded[start:start + size], tuple(scores.shape),
                                    f"seeded ticket '{path}', layer {prefix.rstrip('.')}")
        start += size
    if masks_digest(list(masks.values())) != member.get("masks_sha256"):
        raise UserError(f"seeded ticket '{path}': its masks decode to other bits than were written "
                        f"(coded by {member.get('coder_version')}, decoded by {coder_version()}): re-export it "
                        "with --portable where it was written")
    return masks


def decode_member(member, state, stored, path):
    """A checkpoint dict of one seeded member: the regenerated tensors but ``stored``'s (the masked
    layers' weights whole: a search keeps them), scores = the 0/1 keep mask (its top-k is the mask),
    then the member's own tensors."""
    out = OrderedDict((k, state[k]) for k in regenerated_keys(state, stored))
    for prefix, keep in decode_masks(member, state, path).items():
        out[prefix + "scores"] = keep.to(state[prefix + "scores"].dtype)
    out.update(unpack_tensors({"layout": member["layout"], "data": member["tensors"]}, path))
    order = [k for k in state if k in out] + [k for k in out if k not in state]
    return {"arch": member.get("arch"), "prune_rate": member.get("prune_rate"), "task": member.get("task"),
            "config": member.get("config"), "card": member.get("card"),
            "state_dict": OrderedDict((k, out[k]) for k in order)}


def to_file(member):
    """A member (or seeded ticket) as written: its JSON-able fields in one compressed ``header``."""
    out = {k: v for k, v in member.items() if k not in HEADER_FIELDS}
    out["header"] = json_tensor({k: member[k] for k in HEADER_FIELDS if k in member})
    return out


def from_file(obj, path):
    return dict({k: v for k, v in obj.items() if k != "header"}, **tensor_json(obj["header"], path))


def decode_seeded(ticket, path="ticket"):
    """A seeded ticket file's dict -> a checkpoint dict (see :func:`decode_member`)."""
    ticket = from_file(ticket, path)
    stored = [name for name, _, _ in ticket["layout"]]
    state = regenerate_checked(ticket["network"], ticket["config"], stored, path)
    return decode_member(ticket, state, stored, path)


def decode_bundle(bundle, path="bundle"):
    """A ``tickets.py bundle`` dict -> [(member name, checkpoint dict)], one regeneration for all.
    The network's ``stored`` names are those every member stores (its first member's)."""
    try:
        network = from_file(bundle, path)["network"]
        state = regenerate_checked(network, network["config"], network["stored"], path)
        return [(m.get("name", f"member{i}"), decode_member(from_file(m, path), state, network["stored"],
                                                             f"{path}#{i}")) for i, m in enumerate(bundle["members"])]
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise UserError(f"ticket bundle '{path}' is damaged ({type(exc).__name__}: {str(exc)[:80]})") from None
