"""Checkpoint-aware defaults for ``-e/--evaluate``: the model structure comes from the checkpoint.

A checkpoint written by main.py / train_full.py (or a ``tickets.py export`` file)
stores its kept fraction and config. ``main.py -e --pretrained CKPT`` takes k,
width, arch, layer types and init from it for every such flag not typed on the
command line; a typed value that disagrees is an error naming both (it would
build another network than the one evaluated). The original's checkpoints store
none of it: the flags are used, as the original does. Tasks that train from
--pretrained (an RTT search from a dense network, ft_*) keep the given flags.
"""
from models.r2s import STRUCTURE_KEYS
from utils.checkpoint import load_checkpoint, refuse_bundle
from utils.errors import UserError

FLAG_NAMES = {"prune_rate": "--prune-rate", "width_mult": "--width-mult", "arch": "--arch",
              "conv_type": "--conv_type", "bn_type": "--bn-type", "first_layer_type": "--first-layer-type",
              "first_layer_dense": "--first-layer-dense", "last_layer_dense": "--last-layer-dense",
              "num_classes": "--num-classes", "init": "--init", "mode": "--mode", "nonlinearity": "--nonlinearity",
              "scale_fan": "--scale-fan", "scale_fan_kept": "--scale-fan-kept", "mbv2_stride_fix": "--mbv2-stride-fix"}


def saved_structure(ckpt):
    """{key: value} of the structure a checkpoint was built with (None values left out)."""
    if not isinstance(ckpt, dict):
        return {}
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    out = {k: config[k] for k in STRUCTURE_KEYS if config.get(k) is not None}
    if isinstance(ckpt.get("arch"), str):
        out["arch"] = ckpt["arch"]
    k = ckpt.get("prune_rate")
    if isinstance(k, (int, float)) and not isinstance(k, bool) and 0 < float(k) <= 1:
        out["prune_rate"] = float(k)
    return out


def _same(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def apply_checkpoint_structure(cfg, path, entry="main"):
    """Set ``cfg``'s structure flags not typed on the command line from the checkpoint at ``path``.

    UserError when a typed flag disagrees with the checkpoint. train_full.py's k stays 1.
    Returns the keys taken from the checkpoint.
    """
    ckpt = load_checkpoint(path)
    refuse_bundle(ckpt, path)
    saved = saved_structure(ckpt)
    if entry == "train_full":
        saved.pop("prune_rate", None)
    given = set(getattr(cfg, "given", ()))
    conflicts = [f"{FLAG_NAMES.get(k, '--' + k)} {getattr(cfg, k)} (given) vs {v} (checkpoint)"
                 for k, v in saved.items() if k in given and not _same(getattr(cfg, k), v)]
    if conflicts:
        raise UserError(f"--evaluate: '{path}' was saved with another model than the flags ask for: "
                        f"{'; '.join(conflicts)}; drop those flags to use the checkpoint's values")
    taken = [k for k, v in saved.items() if k not in given]
    for key in taken:
        setattr(cfg, key, saved[key])
    return taken
