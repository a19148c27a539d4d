"""Range checks of every numeric flag, run by ``parse_config`` before anything is written.

A value out of range is one ``error:`` line naming the flag, the rule and the
value, whether it came from the command line or a YAML preset. Flags whose
ranges depend on the mode (attack settings an entry point would ignore) are
``utils.eval_checks``'s.
"""
import math

from utils.errors import UserError

# dest: (flag as shown, test, rule in words). None values are "not set" and always pass.
RULES = {
    "width_mult": ("--width-mult", lambda v: v > 0, "must be > 0"),
    "epochs": ("--epochs", lambda v: v >= 1, "must be at least 1"),
    "start_epoch": ("--start-epoch", lambda v: v >= 0, "must be >= 0"),
    "batch_size": ("--batch_size", lambda v: v >= 1, "must be at least 1"),
    "test_batch_size": ("--test_batch_size", lambda v: v >= 1, "must be at least 1"),
    "workers": ("--workers", lambda v: v >= 0, "must be >= 0"),
    "print_freq": ("--print-freq", lambda v: v >= 1, "must be at least 1"),
    "image_size": ("--image_size", lambda v: v >= 1, "must be at least 1 (pixels)"),
    "num_classes": ("--num-classes", lambda v: v >= 1, "must be at least 1"),
    "low_data": ("--low-data", lambda v: 0 < v <= 1, "is a fraction of the training set, in (0, 1]"),
    "lr": ("--lr", lambda v: v >= 0, "must be >= 0"),
    "warmup_length": ("--warmup_length", lambda v: v >= 0, "must be >= 0 (epochs)"),
    "momentum": ("--momentum", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "weight_decay": ("--wd", lambda v: v >= 0, "must be >= 0"),
    "label_smoothing": ("--label-smoothing", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "multistep_lr_adjust": ("--multistep_lr_adjust", lambda v: v >= 1, "must be at least 1 (epochs)"),
    "multistep_lr_gamma": ("--multistep_lr_gamma", lambda v: v > 0, "must be > 0"),
    "val_every": ("--val_every", lambda v: v >= 0, "must be >= 0 (epochs; 0 validates every epoch)"),
    "lottery_epochs": ("--lottery_epochs", lambda v: v >= 0, "must be >= 0"),
    "ss_l1": ("--ss_l1", lambda v: v >= 0, "must be >= 0"),
    "weight_decay_on_zero": ("--weight_decay_on_zero", lambda v: v >= 0, "must be >= 0"),
    "lr_scale_zero": ("--lr_scale_zero", lambda v: v >= 0, "must be >= 0"),
    "discard_epoch": ("--discard_epoch", lambda v: v >= 1, "must be at least 1 (epochs)"),
    "discard_rate": ("--discard_rate", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "alpha": ("--alpha", lambda v: 0 <= v <= 255, "is in 0-255 pixel units, in [0, 255]"),
    "train_step": ("--train_step", lambda v: 0 < v <= 255, "is in 0-255 pixel units, in (0, 255]"),
    "eval_step": ("--eval_step", lambda v: 0 < v <= 255, "is in 0-255 pixel units, in (0, 255]"),
    "attack_iters": ("--attack_iters", lambda v: v >= 1, "must be at least 1"),
    "n_repeats": ("--n_repeats", lambda v: v >= 1, "must be at least 1"),
    "seed": ("--seed", lambda v: 0 <= v < 2 ** 32, "must be in [0, 2**32)"),
}
LIST_RULES = {
    "once_for_all_list": ("--once_for_all_list", lambda v: 0 < v <= 1, "holds kept fractions, each in (0, 1]"),
    "multistep": ("--multistep", lambda v: v >= 0, "holds epochs, each >= 0"),
    "std": ("--std", lambda v: v > 0, "holds standard deviations, each > 0"),
    "multigpu": ("--multigpu", lambda v: v >= 0, "holds GPU ids, each >= 0"),
}
EXCLUSIVE = (("scale_fan", "scale_fan_kept", "--scale-fan (the original's fan*(1-k)) and --scale-fan-kept "
                                             "(the correction, fan*k) are alternatives: pass one"),)


def _bad(value, test):
    if isinstance(value, float) and math.isnan(value):
        return True
    return not test(value)


def check_prune_rate_value(cfg):
    """k given (or from a preset) must be in (0, 1]; 0 is the unset default and -1 a preset's
    "you choose" (both answered when a masked model is built: ``utils.config.check_prune_rate``)."""
    k = cfg.prune_rate
    if k is None:
        return
    unset = "prune_rate" not in cfg.given and float(k) in (0.0, -1.0)
    if not unset and _bad(float(k), lambda v: 0 < v <= 1):
        raise UserError(f"--prune-rate (fraction of weights kept) must be in (0, 1], got {k:g}; "
                        "pass e.g. --prune-rate 0.1")


def check_values(cfg, entry=None):
    """UserError for the first numeric flag out of range or pair of exclusive flags both set."""
    for dest, (flag, test, rule) in RULES.items():
        value = getattr(cfg, dest, None)
        if value is not None and _bad(value, test):
            raise UserError(f"{flag} {rule}, got {value:g}")
    for dest, (flag, test, rule) in LIST_RULES.items():
        for value in getattr(cfg, dest, None) or ():
            if _bad(value, test):
                raise UserError(f"{flag} {rule}, got {value:g}")
    for a, b, why in EXCLUSIVE:
        if getattr(cfg, a, None) and getattr(cfg, b, None):
            raise UserError(why)
    if entry != "train_full":  # train_full.py trains dense (k = 1) whatever a shared preset says
        check_prune_rate_value(cfg)
    if entry in ("main", "demo") and not cfg.evaluate and cfg.conv_type != "DenseConv":
        from utils.config import check_prune_rate
        check_prune_rate(cfg.prune_rate)  # k not given: say so now, before the dataset is even read
