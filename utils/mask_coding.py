"""Keep masks entropy-coded at each layer's own rate (the seeded ticket's masks).

A layer's mask is n Bernoulli(p) bits with p = kept / n, the layer's kept fraction
(top-k per layer: every masked layer keeps n - int((1 - k) n) of its n weights, so
p is k up to rounding). An asymmetric numeral system (the ``constriction`` library's
``AnsCoder``, a stack coder with 32-bit words) codes them in about n H(p) bits plus
at most a few words; H is the binary entropy. Layers that keep all or none of their
weights cost nothing: their count says it all.

Why ANS rather than a general compressor on the bit-packed mask (bench/ticket_size.py,
full-width cResNet18, 11.2M masked weights, 2 loaded CPU cores): ANS is within 0.0001 bit
per weight of H(p) at p = 0.01, 0.1 and 0.5 and codes in 0.1-0.16 s; lzma -9e and zstd -19
stay 0.015 to 0.022 bit per weight above H(p) at p <= 0.1 (a 3-19% larger mask) and take
0.3-2.1 s; at p = 0.5 all three store 1 bit per weight.

The coded words depend on how ``constriction`` quantises p (24-bit probabilities in
0.5); a ticket records the library version and checks every decoded mask's kept count
and the SHA-256 of all masks, so another coder can never give a silently wrong mask.
"""
import hashlib
import importlib.metadata

import numpy as np
import torch

from utils.errors import UserError

CODER = "constriction AnsCoder, Bernoulli(kept / n) per layer, perfect=False"


def _constriction():
    try:
        import constriction
    except ImportError:
        raise UserError("seeded tickets need the 'constriction' package (pip install 'constriction>=0.4,<0.6'); "
                        "or use a ticket exported with --portable") from None
    return constriction


def coder_version():
    try:
        return f"constriction {importlib.metadata.version('constriction')}"
    except importlib.metadata.PackageNotFoundError:
        return "constriction (version unknown)"


def _model(constriction, kept, n):
    return constriction.stream.model.Bernoulli(kept / n, perfect=False)


def encode_mask(keep):
    """Bool mask -> (kept count, coded bytes: little-endian uint32 words; empty if all or none kept)."""
    flat = keep.reshape(-1).numpy()
    n, kept = flat.size, int(np.count_nonzero(flat))
    if kept in (0, n):
        return kept, b""
    constriction = _constriction()
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(flat.astype(np.int32), _model(constriction, kept, n))
    return kept, coder.get_compressed().astype("<u4").tobytes()


def decode_mask(kept, coded, shape, what="mask"):
    """Inverse of :func:`encode_mask`: the bool mask of ``shape``; UserError if it does not keep ``kept``."""
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    if kept in (0, n):
        return torch.full(tuple(shape), bool(kept), dtype=torch.bool)
    if not 0 < kept < n or len(coded) % 4:
        raise UserError(f"{what} is damaged (kept {kept} of {n}, {len(coded)} coded bytes)")
    constriction = _constriction()
    words = np.frombuffer(coded, dtype="<u4").astype(np.uint32)
    try:
        flat = constriction.stream.stack.AnsCoder(words).decode(_model(constriction, kept, n), n)
    except (ValueError, RuntimeError) as exc:  # not a valid ANS stream
        raise UserError(f"{what} is damaged ({type(exc).__name__})") from None
    if int(np.count_nonzero(flat)) != kept:
        raise UserError(f"{what} decodes to {int(np.count_nonzero(flat))} kept weights, not {kept}: the file is "
                        f"damaged or was coded by another coder than {coder_version()}")
    return torch.from_numpy(flat.astype(bool)).view(tuple(shape))


def masks_digest(masks):
    """SHA-256 (hex) of masks in order, each bit-packed (numpy packbits, C order): checks decoding."""
    digest = hashlib.sha256()
    for keep in masks:
        digest.update(np.packbits(keep.reshape(-1).numpy().astype(np.uint8)).tobytes())
    return digest.hexdigest()
