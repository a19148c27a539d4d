"""Seeding and RNG state capture (Python, NumPy, torch, CUDA) as weights-only-safe values.

Checkpoints store :func:`get_rng_state` so that a resumed run draws the same
random numbers (attack starts, augmentation) as an uninterrupted one. The data
order needs no state here: loaders derive it from (--seed, epoch) alone.
A run without --seed gets a fresh seed (:func:`resolve_seed`), recorded in its
config, so its data order and augmentation differ from other runs' (as the
original's, which shuffles from an unseeded RNG) and ``--seed N`` repeats it.
"""
import random
import secrets

import numpy as np
import torch

from utils.errors import UserError


def seed_all(seed):
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_seed(cfg, agree=None):
    """Give ``cfg.seed`` a value: --seed, else a fresh random one in [0, 2**31).

    ``cfg.seed_drawn`` records which (a resumed run adopts its checkpoint's drawn
    seed). ``agree(seed) -> seed`` makes every process use rank 0's draw.
    """
    cfg.seed_drawn = cfg.seed is None
    if cfg.seed_drawn:
        seed = secrets.randbelow(2**31)
        cfg.seed = int(agree(seed)) if agree else seed
    return cfg.seed


def get_rng_state():
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def gather_rng_states(ctx):
    """Every rank's :func:`get_rng_state`, in rank order (a list of one on one process).

    A collective: every rank must call it. Checkpoints keep the list so that each
    rank of a resumed DistributedDataParallel run gets its own stream back.
    """
    state = get_rng_state()
    if not ctx.enabled:
        return [state]
    import torch.distributed as dist

    states = [None] * ctx.world_size
    dist.all_gather_object(states, state)
    return states


def rng_for_rank(ckpt, ctx):
    """This rank's saved RNG state: its own if the world size matches, else rank 0's."""
    states = ckpt.get("rng_ranks")
    if isinstance(states, list) and len(states) == ctx.world_size:
        return states[ctx.rank]
    return ckpt.get("rng")


def set_rng_state(state, path="checkpoint"):
    """Restore :func:`get_rng_state`'s output; None (an older checkpoint) changes nothing.

    CUDA states are restored only when the number of visible GPUs matches.
    """
    if not state:
        return
    try:
        version, internal, gauss = state["python"]
        n = state["numpy"]
        numpy_state = (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state(numpy_state)
        torch.set_rng_state(state["torch"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise UserError(f"'{path}': its random-number state is malformed ({type(exc).__name__}); "
                        "the file is damaged or was not written by this tool") from None
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
