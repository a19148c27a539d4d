"""The ticket file of ``tickets.py export``: a ticket in the fewest bits that rebuild its logits exactly.

A ticket is a dict saved with ``torch.save`` and read back with
``torch.load(weights_only=True)`` (``utils.checkpoint.load_checkpoint``), holding
only tensors, strings, numbers, lists and dicts, so loading runs no code:

* ``format`` = ``"rst-ticket"``, ``version``, ``arch``, ``prune_rate`` (k, fraction kept),
  ``task``, ``config`` (every flag of the run, preset included) and ``card`` (the model card);
* ``layers``: per masked layer (state-dict prefix), ``mask``: its keep mask over the
  scores, bit-packed (uint8, C order, most significant bit first), and its kept weights:
  ``encoding`` ``signed_constant`` (one constant and one sign bit per kept weight,
  packed the same way) when every kept weight is +-c bit for bit; ``signed_constant+zeros``
  the same plus ``zeros``, the int64 positions (among the kept weights) of those that are
  exactly 0, whose sign bit is their bit in ``signs``; else ``kept`` (the kept weights
  themselves, in their dtype, in C order);
* ``tensors``: every other state-dict entry as it is (BatchNorm statistics, dense layers);
  ``order``: the state dict's key order.

That is the portable format (version 1): it loads wherever torch does. Version 2,
``weights`` = ``"seeded"``, is a search's ticket as its seed and entropy-coded masks
(``models.seeded``, written by ``trainers.ticket_seeded``).

``decode_ticket`` returns a checkpoint dict (``state_dict`` with pruned weights 0
and scores = the 0/1 mask, whose top-k is that mask) that every loader of
``--pretrained`` accepts.
"""
import json
import zlib
from collections import OrderedDict

import torch

from utils.errors import UserError

FORMAT, VERSION = "rst-ticket", 1
SEEDED_VERSION = 2  # a seeded ticket (models.seeded): seed, flags, entropy-coded masks, BN statistics
BUNDLE_FORMAT = "rst-ticket-bundle"  # tickets.py bundle: one network, N members (for R2S)
_BIT_VALUES = (128, 64, 32, 16, 8, 4, 2, 1)


def pack_bits(flags):
    """Bool tensor -> uint8 tensor of ceil(n / 8) bytes (C order, most significant bit first)."""
    flat = flags.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 8)]).view(-1, 8)
    return (flat * torch.tensor(_BIT_VALUES, dtype=torch.uint8)).sum(1, dtype=torch.uint8)


def unpack_bits(packed, n):
    """uint8 tensor from ``pack_bits`` -> the first ``n`` bools."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8)
    return ((packed.reshape(-1, 1) >> shifts) & 1).reshape(-1)[:n].bool()


def is_ticket(obj):
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def is_bundle(obj):
    """True for a ``tickets.py bundle`` (N tickets of one network, for R2S)."""
    return isinstance(obj, dict) and obj.get("format") == BUNDLE_FORMAT


def signed_constant_values(c, signs, zeros=None):
    """Kept weights of a signed-constant layer: +c where ``signs`` is set, else -c; at the positions
    ``zeros`` (kept weights that are exactly 0) +0.0 or -0.0 by the same bit."""
    values = torch.where(signs, c, -c)
    if zeros is not None and zeros.numel():
        values[zeros] = torch.where(signs[zeros], 0.0, -0.0).to(values.dtype)
    return values


def broadcast_keep(keep, weight_shape):
    """A keep mask over the scores (weight-shaped, or one score per filter / kernel / row,
    stored with fewer dims) as a bool mask over the weight."""
    keep = keep.reshape(tuple(keep.shape) + (1,) * (len(weight_shape) - keep.dim()))
    return keep.expand(tuple(weight_shape))


def _dtype(name):
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise UserError(f"ticket: unknown dtype '{name}'")
    return dtype


def decode_layer(entry, path):
    """(weight, scores) of one masked layer; pruned weights are 0, scores the 0/1 keep mask."""
    try:
        mask_shape, weight_shape = tuple(entry["mask_shape"]), tuple(entry["weight_shape"])
        dtype = _dtype(entry["dtype"])
        n = 1
        for d in mask_shape:
            n *= d
        keep = unpack_bits(entry["mask"], n).view(mask_shape)
        keep_w = broadcast_keep(keep, weight_shape)
        kept = int(keep_w.sum())
        if entry["encoding"] in ("signed_constant", "signed_constant+zeros"):
            values = signed_constant_values(entry["constant"].to(dtype), unpack_bits(entry["signs"], kept),
                                            entry["zeros"] if entry["encoding"] == "signed_constant+zeros" else None)
        else:
            values = entry["kept"].to(dtype)
        weight = torch.zeros(weight_shape, dtype=dtype)
        weight[keep_w] = values
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise UserError(f"ticket '{path}' is damaged ({type(exc).__name__}: {str(exc)[:80]})") from None
    return weight, keep.to(dtype)


def decode_ticket(ticket, path="ticket"):
    """A ticket dict -> a checkpoint dict (arch, prune_rate, config, state_dict, card)."""
    if ticket.get("version") == SEEDED_VERSION and ticket.get("weights") == "seeded":
        # the one import from utils up into models: a seeded ticket's weights come from the model
        # builder, and every loader of --pretrained passes through load_checkpoint -> here
        from models.seeded import decode_seeded
        try:
            return decode_seeded(ticket, path)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"seeded ticket '{path}' is damaged ({type(exc).__name__}: {str(exc)[:80]})") from None
    if ticket.get("version") != VERSION:
        raise UserError(f"ticket '{path}' has format version {ticket.get('version')}; this code reads {VERSION} "
                        f"(portable) and {SEEDED_VERSION} (seeded)")
    state = {}
    for prefix, entry in ticket["layers"].items():
        state[prefix + "weight"], state[prefix + "scores"] = decode_layer(entry, path)
    state.update(ticket["tensors"])
    order = [k for k in ticket.get("order", []) if k in state]
    state = OrderedDict((k, state[k]) for k in order + [k for k in state if k not in order])
    return {"arch": ticket.get("arch"), "prune_rate": ticket.get("prune_rate"), "task": ticket.get("task"),
            "config": ticket.get("config"), "card": ticket.get("card"), "state_dict": state}


def pack_tensors(tensors):
    """{name: tensor} -> one flat tensor per dtype (torch.save writes each tensor as its own zip record,
    about 150 bytes apiece) plus the names and shapes; inverse: :func:`unpack_tensors`."""
    groups, layout = {}, []
    for name, t in tensors.items():
        dtype = str(t.dtype).replace("torch.", "")
        groups.setdefault(dtype, []).append(t.detach().cpu().reshape(-1))
        layout.append([name, dtype, list(t.shape)])
    return {"layout": layout, "data": {d: torch.cat(ts) for d, ts in groups.items()}}


def unpack_tensors(packed, path="ticket"):
    out, offsets = OrderedDict(), {}
    try:
        for name, dtype, shape in packed["layout"]:
            start, n = offsets.get(dtype, 0), 1
            for d in shape:
                n *= int(d)
            data = packed["data"][dtype]
            if start + n > data.numel() or data.dtype != _dtype(dtype):
                raise ValueError(f"{name} runs past its {dtype} data")
            out[name] = data[start:start + n].view(tuple(shape)).clone()
            offsets[dtype] = start + n
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"ticket '{path}' is damaged ({type(exc).__name__}: {str(exc)[:80]})") from None
    return out


def json_tensor(obj):
    """A JSON-able object as a uint8 tensor of its zlib-compressed JSON: a seeded ticket's header
    (flags, card, layer index) in about a third of its pickled size and one zip record."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return torch.frombuffer(bytearray(zlib.compress(text, 9)), dtype=torch.uint8)


def tensor_json(t, path="ticket"):
    try:
        return json.loads(zlib.decompress(t.numpy().tobytes()))
    except (zlib.error, ValueError, AttributeError, TypeError) as exc:
        raise UserError(f"ticket '{path}' is damaged (its header: {type(exc).__name__})") from None
