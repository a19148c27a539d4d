"""Checkpoints: atomic saving, safe loading, and loading the original's files.

* Saving writes a temporary file in the same folder, flushes and fsyncs it and
  renames it over the target, so a kill at any moment leaves the previous file intact.
* Loading always uses ``torch.load(weights_only=True)``: a checkpoint that would
  need arbitrary code to unpickle is refused and nothing in it runs. The only
  globals added to torch's allowlist, for our loads only, are numpy's scalar and
  dtype reconstructors: the original's LR policies leave numpy float64 learning
  rates in its optimizer state, so every checkpoint it wrote holds them.
* State dicts saved from ``DataParallel``/DDP (keys prefixed ``module.``) load into
  the bare model; our own checkpoints use the bare key names.
"""
import contextlib
import logging
import os
import pickle
import re
import tempfile
import warnings

import torch

from utils.errors import UserError
from utils.ticket_format import decode_ticket, is_bundle, is_ticket

log = logging.getLogger("rst")
TMP_PREFIX = ".tmp-"  # temporary files of atomic_save; glob('*.pth') does not match them
UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
UNSUPPORTED_OP = re.compile(r"Unsupported operand \d+")


def atomic_save(obj, path):
    """torch.save to ``path`` via a same-folder temporary file and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".pth", dir=folder)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; checkpoints are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_folder(folder)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fsync_folder(folder):
    """Make the rename itself durable (power loss); not possible on every OS."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder):
    """Delete temporary files left by a save that was killed (kill -9) mid-write."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if name.startswith(TMP_PREFIX) and name.endswith(".pth"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


def _first_line(exc, limit=120):
    """First sentence of an exception message (torch's run to several lines of advice)."""
    text = str(exc).strip().splitlines()
    return (text[0].split(". ")[0] if text else type(exc).__name__)[:limit]


# Numeric dtype codes (bool, signed/unsigned ints, floats, complex); no object, string,
# void or datetime dtypes.
NUMPY_NUMERIC_DTYPES = "?bhilqpBHILQPefdgFDG"


def numpy_scalar_globals():
    """numpy's scalar and dtype reconstructors, under numpy 1.x's and 2.x's names.

    A pickled numpy scalar is ``scalar(dtype, raw bytes)`` and its dtype is
    ``dtype(code)`` plus a BUILD of its byte order, which needs the dtype's class
    (``numpy.dtypes.Float64DType`` on numpy >= 1.25). These rebuild a number from
    bytes and run nothing else; ndarray reconstruction stays refused.
    """
    try:
        import numpy as np
    except ImportError:  # without numpy no checkpoint can hold numpy scalars
        return []
    scalar = (getattr(np, "_core", None) or np.core).multiarray.scalar
    allowed = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    allowed += sorted({type(np.dtype(code)) for code in NUMPY_NUMERIC_DTYPES} - {np.dtype}, key=str)
    return allowed


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint safely (weights only); every failure is a one-line UserError.

    A pickle that references anything outside torch's weights-only allowlist (a
    class, a function such as ``os.system``) is refused before any of it runs;
    numpy scalars are accepted (``numpy_scalar_globals``), only during this load.
    """
    if not path or not os.path.exists(path):
        raise UserError(f"checkpoint '{path}' not found; check the path")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint '{path}' is not a file; pass the .pth file itself")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(numpy_scalar_globals()):
            warnings.simplefilter("ignore")  # torch warns about pickle protocols on stderr
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = UNSAFE_GLOBAL.search(str(exc))
        if unsafe:
            raise UserError(f"checkpoint '{path}' was refused: loading it would run code "
                            f"({unsafe.group(1)}); only weights-only checkpoints are accepted, so re-save "
                            "it with torch.save of plain tensors/dicts from code you trust") from None
        detail = UNSUPPORTED_OP.search(str(exc))
        raise UserError(f"checkpoint '{path}' is corrupt, truncated or not a weights-only PyTorch file "
                        f"({detail.group(0) if detail else 'unreadable pickle'}); use another copy") from None
    except MemoryError:
        raise UserError(f"checkpoint '{path}' is too large to load into memory") from None
    except Exception as exc:  # EOFError, zip/stream errors, KeyError on text files, OSError...
        raise UserError(f"checkpoint '{path}' is corrupt or truncated ({type(exc).__name__}: "
                        f"{_first_line(exc)}); use another copy") from None
    return decode_ticket(obj, path) if is_ticket(obj) else obj  # a tickets.py export: a checkpoint dict


def refuse_bundle(ckpt, path="checkpoint"):
    """UserError if ``ckpt`` is a ``tickets.py bundle`` (N tickets, no single model to load)."""
    if is_bundle(ckpt):
        raise UserError(f"'{path}' is a ticket bundle ({len(ckpt.get('members') or [])} tickets of one network): "
                        f"test_trans.py --r2s or --all_sources reads it; this command takes one ticket or checkpoint")


def extract_state_dict(ckpt, path="checkpoint"):
    """The model state dict inside a checkpoint (or the checkpoint itself), bare keys."""
    refuse_bundle(ckpt, path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"'{path}' holds no model state_dict")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_model_state(model, state, strict=True, path="checkpoint"):
    """Copy ``state`` into ``model``; mismatches are an error unless not strict.

    Returns the list of skipped key names (empty when everything matched).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    skipped = missing + unexpected + shape
    if skipped and strict:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shape)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise UserError(f"'{path}' does not match the model ({'; '.join(parts)}): wrong --arch, "
                        "--num-classes, --width-mult or dataset? Pass --not_strict to load what matches")
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    if skipped:
        log.warning("not strict: skipped %d keys: %s", len(skipped), ", ".join(skipped))
    return skipped


def check_arch(ckpt, arch, path):
    saved = ckpt.get("arch") if isinstance(ckpt, dict) else None
    if saved is not None and saved != arch:
        raise UserError(f"'{path}' was saved from arch '{saved}' but --arch is '{arch}'; "
                        f"pass --arch {saved} or a checkpoint of {arch}")


def _original_param_order(model, n_groups):
    """The trainable parameters in the order the original's optimizer numbered them.

    SGD (two groups): parameters whose name contains 'bn' first, then the rest;
    Adam (one group): ``model.parameters()`` order. Frozen ones are left out.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if n_groups == 1:
        return named
    return [(n, p) for n, p in named if "bn" in n] + [(n, p) for n, p in named if "bn" not in n]


def original_optimizer_state(saved, model, optimizer, path="checkpoint"):
    """An optimizer state written by the original, re-keyed for ``optimizer``.

    The original's SGD has a BatchNorm group first (empty with NonAffineBatchNorm)
    and the other parameters second; ours orders and drops groups differently, so
    each saved per-parameter state (momentum buffers, Adam moments) is matched to
    its parameter by the original's numbering and checked by shape. Group
    hyper-parameters stay this run's (the LR policy sets the LR every epoch).
    Returns None when the saved state is empty.
    """
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not groups:
        return None
    saved_ids = [i for g in groups for i in g.get("params", [])]
    order = _original_param_order(model, len(groups))
    if len(saved_ids) != len(order):
        raise UserError(f"'{path}': its optimizer holds {len(saved_ids)} parameters and this run trains "
                        f"{len(order)}; check --task, --optimizer and --bn-type, or pass --pretrained instead")
    ours = optimizer.state_dict()
    our_index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    state = {}
    for saved_id, (name, p) in zip(saved_ids, order):
        entry = saved.get("state", {}).get(saved_id)
        if entry is None or id(p) not in our_index:
            continue
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                raise UserError(f"'{path}': optimizer state '{key}' of {name} has shape {tuple(value.shape)}, "
                                f"the parameter {tuple(p.shape)}; the checkpoint is of another model")
        state[our_index[id(p)]] = entry
    return {"state": state, "param_groups": ours["param_groups"]}
