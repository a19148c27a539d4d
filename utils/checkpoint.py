"""Checkpoints: atomic saving, safe loading, and loading the original's files.

* Saving writes a temporary file in the same folder, flushes and fsyncs it and
  renames it over the target, so a kill at any moment leaves the previous file intact.
* Loading always uses ``torch.load(weights_only=True)``: a checkpoint that would
  need arbitrary code to unpickle is refused and nothing in it runs.
* State dicts saved from ``DataParallel``/DDP (keys prefixed ``module.``) load into
  the bare model; our own checkpoints use the bare key names.
"""
import logging
import os
import pickle
import tempfile
import zipfile

import torch

from utils.errors import UserError

log = logging.getLogger("rst")


def atomic_save(obj, path):
    """torch.save to ``path`` via a same-folder temporary file and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint safely (weights only); user-facing errors are one line."""
    if not path or not os.path.isfile(path):
        raise UserError(f"checkpoint '{path}' not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe pickle"
        if "Weights only load failed" in str(exc) or "Unsupported" in str(exc) or "global" in str(exc):
            raise UserError(f"checkpoint '{path}' needs arbitrary code to load and was refused "
                            "(only weights-only checkpoints are accepted)") from None
        raise UserError(f"checkpoint '{path}' is corrupt or truncated ({first})") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint '{path}' is corrupt or truncated ({first[:120]})") from None


def extract_state_dict(ckpt, path="checkpoint"):
    """The model state dict inside a checkpoint (or the checkpoint itself), bare keys."""
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
        raise UserError(f"'{path}' was saved from arch '{saved}' but --arch is '{arch}'")
