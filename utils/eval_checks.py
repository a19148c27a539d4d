"""Evaluation settings a user can get wrong: out-of-range values, and flags the chosen mode ignores.

``check_eval_settings(cfg, entry)`` runs in each entry point before anything is
written, so a bad value is one ``error:`` line (exit 2) and never a traceback
after the run directory or a checkpoint exists. Only flags typed on the command
line count as "given" (``cfg.given``): a YAML preset shared by several entry points
may set keys that one of them does not use.
"""
from utils.errors import UserError

AT_LEAST_ONE = ("eot_samples", "eot_steps", "aa_steps", "aa_queries", "eval_passes", "n_eval")
R2S_ONLY = ("eot_samples", "eot_steps", "eval_passes")


def resolve_epsilon(cfg):
    """--epsilon in 0-255 pixel units. A value strictly between 0 and 1 is almost surely a
    [0, 1] radius typed where 1/255 units are expected (0.03 would attack at 0.03/255): an
    error unless ``--epsilon-units unit`` says the value is in [0, 1] units, which it is
    then converted from (``cfg.epsilon`` becomes 255 x the value; ``epsilon_given`` keeps it)."""
    eps, units = cfg.epsilon, getattr(cfg, "epsilon_units", "255")
    if units == "unit" and not getattr(cfg, "epsilon_given", None):
        if not 0 <= eps <= 1:  # also refuses NaN
            raise UserError(f"--epsilon-units unit: --epsilon is in [0, 1] units, got {eps:g}")
        cfg.epsilon_given, cfg.epsilon = eps, eps * 255
    elif units == "255" and 0 < eps < 1:
        raise UserError(f"--epsilon is in 1/255 units: {eps:g} = {eps:g}/255; did you mean "
                        f"{round(eps * 255):d}? (pass --epsilon-units unit if {eps:g} is a [0, 1] radius)")


def check_ranges(cfg):
    resolve_epsilon(cfg)
    eps = cfg.epsilon
    if not 0 <= eps <= 255:  # also refuses NaN
        raise UserError(f"--epsilon is in 0-255 pixel units (8 means 8/255), got {eps:g}")
    for dest in AT_LEAST_ONE:
        value = getattr(cfg, dest, None)
        if value is not None and value < 1:
            raise UserError(f"--{dest} must be at least 1, got {value}")
    split = getattr(cfg, "val_split", None)
    if split is not None and not 0 < split < 1:
        raise UserError(f"--val_split is the fraction of the training set held out for model selection, "
                        f"in (0, 1); got {split:g}")


def ignored_flags(cfg, entry):
    """``[(flag, why), ...]`` for given flags that ``entry`` ('main', 'train_full', 'test_trans')
    would not use with the other settings."""
    given = set(getattr(cfg, "given", ()))
    autoattack = cfg.eval_attack == "autoattack"
    out = []
    if entry == "test_trans":
        if not cfg.r2s:
            out += [(d, "it is used only with --r2s") for d in R2S_ONLY if d in given]
        if "val_split" in given:
            out.append(("val_split", "it selects the best epoch while training (main.py); test_trans.py "
                                     "evaluates the test split"))
        if "amp" in given and cfg.amp not in (None, "none"):
            out.append(("amp", "test_trans.py runs every attack and evaluation in fp32"))
    else:
        out += [(d, "it is a test_trans.py flag") for d in ("all_sources", "r2s") if d in given]
        out += [(d, "it is used only by test_trans.py --r2s") for d in R2S_ONLY if d in given]
        if "eval_attack" in given and not cfg.attack_type:
            out.append(("eval_attack", f"{entry}.py measures robust accuracy only with --attack_type"))
        if "val_split" in given and cfg.evaluate:
            out.append(("val_split", "it selects the best epoch while training; --evaluate evaluates the "
                                     "test split"))
        autoattack = autoattack and bool(cfg.attack_type)
    if "aa_version" in given and not autoattack:
        out.append(("aa_version", "it is used only with --eval_attack autoattack"
                                  + ("" if entry == "test_trans" else " and an --attack_type")))
    for dest in ("aa_steps", "aa_queries"):
        if dest in given and not autoattack:
            out.append((dest, "it is used only with --eval_attack autoattack"
                              + ("" if entry == "test_trans" else " and an --attack_type")))
    return out


EVAL_PGD_ITERS = 20  # the evaluation PGD-20 (attacks.pgd.pgd20) and the transfer examples' PGD-20


def check_attack_reach(cfg, entry):
    """UserError when an evaluation PGD of this run cannot reach the eps-ball's surface from the clean
    input (iterations x ``--eval_step`` < ``--epsilon``): it would report a weaker attack's accuracy
    under the radius' name. ``--allow_short_attack`` runs it anyway (the protocol records the flag)."""
    eps, step = float(cfg.epsilon), float(getattr(cfg, "eval_step", 2) or 2)
    if getattr(cfg, "allow_short_attack", False) or eps <= 0:
        return
    if entry != "test_trans" and not (cfg.attack_type and cfg.eval_attack == "pgd"):
        return  # no evaluation PGD runs (natural training, or AutoAttack)
    attacks = [("PGD-20", EVAL_PGD_ITERS)]
    if entry == "test_trans" and getattr(cfg, "r2s", False):
        attacks.append(("--eot_steps", int(cfg.eot_steps)))
    for name, iters in attacks:
        if iters * step < eps:
            usual = f" (eps/4 = {eps / 4:g} is usual)" if iters >= 4 else ""
            raise UserError(f"--eval_step {step:g} x {iters} steps ({name}) = {iters * step:g}/255 cannot reach the "
                            f"surface of the --epsilon {eps:g}/255 ball; pass --eval_step >= {eps / iters:g}{usual} "
                            f"or --allow_short_attack to run the weaker attack")


def check_eval_settings(cfg, entry):
    """UserError for a bad value, an evaluation attack that cannot span the radius, or a flag this
    run would silently ignore."""
    check_ranges(cfg)
    check_attack_reach(cfg, entry)
    ignored = ignored_flags(cfg, entry)
    if ignored:
        raise UserError("; ".join(f"--{flag} would be ignored: {why}" for flag, why in ignored))
