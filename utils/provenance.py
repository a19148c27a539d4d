"""The evaluation protocol behind a reported number, written next to it in every results file.

``eval_protocol(cfg, attack=None, settings=None, **extra)`` is the one place that
turns the config into that record (results.json, transfer_matrix.json, r2s.json):
the radius, the attack and what it ran (``settings``: steps, step size, restarts, the
early-stop rule actually applied, the AutoAttack implementation and version, ...),
the number of examples, the EOT samples and passes, the model-selection split, the
seed and amp. This module knows no attack: the caller passes the settings it read off
the attack that ran (``evaluation.evaluate.attack_settings``, an AutoAttack run's
``protocol()``), so nothing here imports ``attacks``. ``extra`` adds or overrides
fields. ``protocol_changes`` compares the protocol of an earlier run (its stored
config) with this one's, so a resumed or finished run re-evaluates instead of copying
numbers measured otherwise.
"""
from types import SimpleNamespace

# Fields that change what a main.py validation measures. The seed is recorded but
# not compared: it moves the attack's random start, not the protocol.
COMPARED = ("attack", "epsilon", "steps", "step_size", "restarts", "early_stop", "aa_steps", "aa_queries",
            "aa_version", "n_eval", "amp")
NO_SETTINGS = {"steps": None, "step_size": None, "restarts": None, "early_stop": None}


def eval_protocol(cfg, attack=None, settings=None, **extra):
    """The protocol record (a JSON-ready dict) of numbers computed under ``cfg`` with ``attack``.

    ``attack`` defaults to ``cfg.eval_attack``; pass ``attack=False`` for natural
    accuracy only (no radius, no attack fields). ``settings``: what the attack ran
    (merged over the None defaults). Radii and steps are in 1/255 units. ``extra`` is
    merged last (new fields, or overrides of the ones computed here).
    """
    attack = getattr(cfg, "eval_attack", None) if attack is None else (attack or None)
    out = {"attack": attack, "epsilon": getattr(cfg, "epsilon", None) if attack else None, "units": "1/255"}
    out.update(NO_SETTINGS)
    if attack and settings:
        out.update(settings)
    autoattack = attack == "autoattack"
    out.update({"aa_steps": getattr(cfg, "aa_steps", None) if autoattack else None,
                # a config written before --aa_queries existed ran Square's reference 5000 queries
                "aa_queries": getattr(cfg, "aa_queries", 5000) if autoattack else None,
                "aa_version": getattr(cfg, "aa_version", "standard") if autoattack else None,
                "n_eval": getattr(cfg, "n_eval", None),
                "eot_samples": getattr(cfg, "eot_samples", None), "eot_steps": getattr(cfg, "eot_steps", None),
                "passes": getattr(cfg, "eval_passes", None),
                "val_split": getattr(cfg, "val_split", None), "seed": getattr(cfg, "seed", None),
                "amp": getattr(cfg, "amp", "none"),
                "allow_short_attack": bool(getattr(cfg, "allow_short_attack", False)) if attack else None})
    out.update(extra)
    return out


def main_protocol(cfg, settings=None):
    """What a main.py / train_full.py validation computes: PGD-20 (or AutoAttack) only with an
    --attack_type, on --n_eval examples; no EOT, no passes (single models). ``settings``:
    what the attack runs (``evaluation.evaluate.attack_settings``)."""
    attack_type = getattr(cfg, "attack_type", None)
    attack = getattr(cfg, "eval_attack", "pgd") if attack_type else False
    # the training attack beside it (PGD's step in 1/255 units; FGSM steps by --alpha, FGSM-RS by 1.25 eps)
    train = {"train_attack": attack_type, "train_iters": getattr(cfg, "attack_iters", None) if attack_type == "pgd"
             else None, "train_step": getattr(cfg, "train_step", 2) if attack_type == "pgd" else None}
    return eval_protocol(cfg, attack=attack, settings=settings, eot_samples=None, eot_steps=None, passes=None,
                         **train)


def protocol_changes(saved_config, cfg):
    """``['field: old -> new', ...]`` between a checkpoint's stored config and ``cfg``.

    A checkpoint without a stored config (the original's) has an unknown protocol:
    one entry says so, since its numbers cannot be vouched for.
    """
    if not isinstance(saved_config, dict):
        return ["unknown (the checkpoint stores no config)"]
    old, new = main_protocol(SimpleNamespace(**saved_config)), main_protocol(cfg)
    return [f"{k}: {old.get(k)} -> {new.get(k)}" for k in COMPARED if old.get(k) != new.get(k)]
