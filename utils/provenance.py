"""The evaluation protocol behind a reported number, written next to it in every results file.

``eval_protocol(cfg, attack=None, **extra)`` is the one place that turns the
config into that record (results.json, transfer_matrix.json, r2s.json): the
radius, the attack and its steps, step size, restarts and early stop, the
AutoAttack iterations, the number of examples, the EOT samples and passes, the
model-selection split and the seed. ``extra`` adds or overrides fields for
attacks this table does not know (e.g. the R2S attacks). ``protocol_changes``
compares the protocol of an earlier run (its stored config) with this one's, so a
resumed or finished run re-evaluates instead of copying numbers measured otherwise.
"""
import inspect
from types import SimpleNamespace

# Fields that change what a main.py validation measures. The seed is recorded but
# not compared: it moves the attack's random start, not the protocol.
COMPARED = ("attack", "epsilon", "steps", "step_size", "restarts", "early_stop", "aa_steps", "n_eval", "amp")


def _defaults(fn):
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def attack_settings(attack, cfg):
    """Steps, step size (in 1/255), restarts and early stop of a named evaluation attack."""
    from attacks import pgd as pgd_attacks

    if attack == "pgd":  # the evaluation PGD-20 (attacks.pgd.pgd20): read off its own defaults
        d = _defaults(pgd_attacks.pgd20)
        return {"steps": d["iters"], "step_size": round(d["step"] * 255, 6), "restarts": d["restarts"],
                "early_stop": True}
    if attack == "pgd_transfer":  # attacks.pgd.pgd_transfer: no early stop, highest-source-loss iterate
        d = _defaults(pgd_attacks.pgd_transfer)
        return {"steps": d["iters"], "step_size": round(d["step"] * 255, 6), "restarts": 1, "early_stop": False,
                "iterate": "highest source loss per example"}
    if attack == "autoattack":  # torchattacks AutoAttack; APGD's step size is adaptive
        return {"steps": getattr(cfg, "aa_steps", None), "step_size": None, "restarts": 1, "early_stop": True,
                "version": "standard"}
    return {"steps": None, "step_size": None, "restarts": None, "early_stop": None}


def eval_protocol(cfg, attack=None, **extra):
    """The protocol record (a JSON-ready dict) of numbers computed under ``cfg`` with ``attack``.

    ``attack`` defaults to ``cfg.eval_attack``; pass ``attack=False`` for natural
    accuracy only (no radius, no attack fields). Radii and steps are in 1/255 units.
    ``extra`` is merged last (new fields, or overrides of the ones computed here).
    """
    attack = getattr(cfg, "eval_attack", None) if attack is None else (attack or None)
    out = {"attack": attack, "epsilon": getattr(cfg, "epsilon", None) if attack else None, "units": "1/255"}
    out.update(attack_settings(attack, cfg) if attack else
               {"steps": None, "step_size": None, "restarts": None, "early_stop": None})
    out.update({"aa_steps": getattr(cfg, "aa_steps", None) if attack == "autoattack" else None,
                "n_eval": getattr(cfg, "n_eval", None),
                "eot_samples": getattr(cfg, "eot_samples", None), "eot_steps": getattr(cfg, "eot_steps", None),
                "passes": getattr(cfg, "eval_passes", None),
                "val_split": getattr(cfg, "val_split", None), "seed": getattr(cfg, "seed", None),
                "amp": getattr(cfg, "amp", "none")})
    out.update(extra)
    return out


def main_protocol(cfg):
    """What a main.py / train_full.py validation computes: PGD-20 (or AutoAttack) only with an
    --attack_type, on --n_eval examples; no EOT, no passes (single deterministic models)."""
    attack = getattr(cfg, "eval_attack", "pgd") if getattr(cfg, "attack_type", None) else False
    return eval_protocol(cfg, attack=attack, eot_samples=None, eot_steps=None, passes=None)


def protocol_changes(saved_config, cfg):
    """``['field: old -> new', ...]`` between a checkpoint's stored config and ``cfg``.

    A checkpoint without a stored config (the original's) has an unknown protocol:
    one entry says so, since its numbers cannot be vouched for.
    """
    if not isinstance(saved_config, dict):
        return ["unknown (the checkpoint stores no config)"]
    old, new = main_protocol(SimpleNamespace(**saved_config)), main_protocol(cfg)
    return [f"{k}: {old.get(k)} -> {new.get(k)}" for k in COMPARED if old.get(k) != new.get(k)]
