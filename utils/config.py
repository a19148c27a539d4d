"""Command-line and YAML configuration: built-in default < YAML preset < CLI.

``parse_config(argv)`` is called once by an entry point; the returned
``argparse.Namespace`` is the resolved config passed down to every stage.
Nothing here runs at import time.
"""
import argparse
import difflib
import os
import sys

import yaml

from utils.errors import UserError

ATTACK_TYPES = ("fgsm", "fgsm-rs", "pgd", "free", None)
TASKS = ("search", "ft_inherit", "ft_reinit", "ft_full")
FT_FULL_MODES = ("all", "only_zero", "decay_on_zero", "low_lr_zero")
AMP_MODES = ("none", "bf16", "fp16")
PROGRESS_MODES = ("auto", "on", "off")


def _int_list(text):
    """'0,1' -> [0, 1] (the original's --multigpu format)."""
    try:
        return [int(t) for t in str(text).split(",") if t.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'")


def _none_or_str(text):
    return None if text is None or str(text) in ("None", "none", "") else str(text)


def _float_list(text):
    """'0.5,0.4' or '0.5 0.4' -> [0.5, 0.4]."""
    try:
        return [float(t) for t in str(text).replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas or spaces, got '{text}'")


class _FlatList(argparse.Action):
    """``--mean 0.49 0.48 0.45`` and ``--mean 0.49,0.48,0.45`` both give [0.49, 0.48, 0.45]."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [v for part in values for v in part])


def _add_general(p):
    p.add_argument("--config", default=None, help="YAML preset; its keys are the destination names below")
    p.add_argument("--data", default="datasets", help="dataset root folder")
    p.add_argument("--set", default="Digits", help="dataset name (see data registry); Digits needs no download")
    p.add_argument("--download", action="store_true", help="allow torchvision to download a missing dataset")
    p.add_argument("--image_size", type=int, default=32, help="ImageFolder: side length in pixels")
    p.add_argument("--mean", type=_float_list, nargs="+", action=_FlatList, default=None,
                   help="ImageFolder: per-channel mean, e.g. 0.5,0.5,0.5 or 0.5 0.5 0.5")
    p.add_argument("--std", type=_float_list, nargs="+", action=_FlatList, default=None,
                   help="ImageFolder: per-channel std (commas or spaces)")
    p.add_argument("-a", "--arch", default="cResNet18", help="model architecture (see models registry)")
    p.add_argument("--log-dir", dest="log_dir", default=None, help="where runs go (default: ./runs)")
    p.add_argument("-j", "--workers", type=int, default=20, help="data loader worker processes")
    p.add_argument("--name", default=None, help="experiment name (run sub-folder)")
    p.add_argument("--seed", type=int, default=None, help="random seed; fixed seeds make CPU runs repeatable")
    p.add_argument("-p", "--print-freq", dest="print_freq", type=int, default=10, help="log every N batches")
    p.add_argument("--multigpu", type=_int_list, default=None, help="GPU ids to use, e.g. 0,1 (CPU if no CUDA)")
    p.add_argument("--trainer", default="default", help="training loop: default, lottery or ss")
    p.add_argument("--lottery_epochs", type=int, default=6, help="--trainer lottery: dense epochs before the search")
    p.add_argument("--ss_l1", type=float, default=1e-8, help="--trainer ss: weight of the sum of sigmoid(scores)")
    p.add_argument("--task", default="search", choices=TASKS, help="search a ticket or fine-tune one")
    p.add_argument("--low-data", dest="low_data", type=float, default=1.0, help="fraction of training data used")
    p.add_argument("--one-batch", dest="one_batch", action="store_true", help="use a single batch per epoch (debug)")


def _add_optim(p):
    p.add_argument("--optimizer", default="sgd", help="sgd or adam")
    p.add_argument("--epochs", type=int, default=160, help="number of epochs")
    p.add_argument("--start-epoch", dest="start_epoch", type=int, default=None, help="manual epoch to start at")
    p.add_argument("-b", "--batch_size", type=int, default=256, help="global batch size (all GPUs/ranks)")
    p.add_argument("--test_batch_size", type=int, default=None, help="evaluation batch size (default batch_size//2)")
    p.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=0.1, help="initial learning rate")
    p.add_argument("--warmup_length", type=int, default=0, help="linear warm-up epochs")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=1e-4, help="weight decay")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    p.add_argument("--no-bn-decay", dest="no_bn_decay", action="store_true", help="no weight decay on BatchNorm")
    p.add_argument("--label-smoothing", dest="label_smoothing", type=float, default=None, help="label smoothing")
    p.add_argument("--lr_policy", default="cifar_piecewise", help="learning-rate schedule (see registry)")
    p.add_argument("--multistep_lr_adjust", type=int, default=30, help="epochs between decays (imagenet policies)")
    p.add_argument("--multistep_lr_gamma", type=float, default=0.1, help="decay factor (imagenet policies)")
    p.add_argument("--multistep", type=int, nargs="*", default=None,
                   help="multistep_lr milestones in epochs: x0.1 at the first, x0.01 at the second")
    p.add_argument("--val_every", type=int, default=3, help="validate every N epochs (and at the last)")
    p.add_argument("--val_split", type=float, default=None,
                   help="hold out this fraction of the TRAINING set (seeded, stratified) and pick the best epoch "
                        "on it; default: off, the best epoch is picked on the test split as in the paper")
    p.add_argument("--save_every", type=int, default=-1,
                   help="write checkpoints/model_latest.pth every N epochs (N <= 0, the default -1: every "
                        "epoch), and always after the last epoch, a new best and on SIGTERM; a kill -9 "
                        "loses at most N epochs (--automatic_resume continues from that file)")


def _add_model(p):
    p.add_argument("--prune-rate", dest="prune_rate", type=float, default=0.0,
                   help="k: fraction of weights KEPT in each masked layer, in (0, 1]")
    p.add_argument("--width-mult", dest="width_mult", type=float, default=1.0, help="scale every layer's width")
    p.add_argument("--num-classes", dest="num_classes", type=int, default=None,
                   help="number of classes (default: from the dataset)")
    p.add_argument("--conv_type", default=None, help="masked/dense layer type (default SubnetConv)")
    p.add_argument("--bn-type", dest="bn_type", default=None, help="BatchNorm type (default NonAffineBatchNorm)")
    p.add_argument("--first-layer-type", dest="first_layer_type", default=None, help="layer type of the first conv")
    p.add_argument("--first-layer-dense", dest="first_layer_dense", action="store_true", help="first layer dense")
    p.add_argument("--last-layer-dense", dest="last_layer_dense", action="store_true", help="classifier dense")
    p.add_argument("--freeze-weights", dest="freeze_weights", action="store_true", help="do not train weights")
    p.add_argument("--init", default="kaiming_normal", help="weight init (see registry)")
    p.add_argument("--mode", default="fan_in", help="fan used by the init: fan_in or fan_out")
    p.add_argument("--nonlinearity", default="relu", help="gain of the init")
    p.add_argument("--scale-fan", dest="scale_fan", action="store_true",
                   help="as the original: signed/unsigned_constant and kaiming_normal use fan*(1-k), every layer")
    p.add_argument("--scale-fan-kept", dest="scale_fan_kept", action="store_true",
                   help="correction (opt-in): fan*k, the kept connections, in masked layers, every fan-based init")
    p.add_argument("--mbv2-stride-fix", dest="mbv2_stride_fix", action="store_true",
                   help="MobileNetV2 downsamples as designed (num_classes logits); the original's depthwise "
                        "convs ignore their stride (8x8x num_classes logits at 32x32)")
    p.add_argument("--score-init-constant", dest="score_init_constant", type=float, default=None,
                   help="SampleSubnetConv: initial value of every score")
    p.add_argument("--random-subnet", dest="random_subnet", action="store_true", help="random mask, no search")
    p.add_argument("--channels_last", action="store_true", help="channels-last memory format (GPU speed)")


def _add_attack(p):
    p.add_argument("--attack_type", type=_none_or_str, default=None, choices=ATTACK_TYPES,
                   help="adversarial training attack (None: natural training)")
    p.add_argument("--epsilon", type=float, default=8, help="L-inf radius in 0-255 pixel units")
    p.add_argument("--epsilon-units", dest="epsilon_units", default="255", choices=("255", "unit"),
                   help="units of --epsilon: 255 (8 means 8/255; a value below 1 is an error) or unit "
                        "([0, 1] units: 0.03 means 0.03, converted to 7.65/255)")
    p.add_argument("--alpha", type=float, default=10, help="fgsm step in 0-255 pixel units")
    p.add_argument("--attack_iters", type=int, default=7, help="PGD steps during training")
    p.add_argument("--n_repeats", type=int, default=4, help="free adversarial training replays")
    p.add_argument("--eval_attack", default="pgd", help="evaluation attack: pgd (PGD-20) or autoattack")
    p.add_argument("--n_eval", type=int, default=None, help="limit the number of test examples evaluated")
    p.add_argument("--eot_samples", type=int, default=10, help="R2S EOT-PGD: switch draws per step")
    p.add_argument("--eval_passes", type=int, default=3, help="R2S: evaluation passes (mean and spread)")
    p.add_argument("--eot_steps", type=int, default=20, help="R2S EOT-PGD: attack steps (step 2/255)")
    p.add_argument("--aa_steps", type=int, default=100,
                   help="AutoAttack: APGD/APGD-T/FAB iterations (the reference's 100; fewer only for quick checks)")
    p.add_argument("--aa_version", default="standard", choices=("standard", "plus", "rand"),
                   help="AutoAttack version (reference pyautoattack); a randomised model always gets rand")


def _add_tasks(p):
    p.add_argument("--pretrained", default=None, help="checkpoint to start from / evaluate")
    p.add_argument("--pretrained2", default=None, help="second checkpoint (scores from it)")
    p.add_argument("--resume", default="", help="checkpoint to resume training from")
    p.add_argument("--automatic_resume", action="store_true",
                   help="resume from this run's checkpoints/model_latest.pth if it exists (else start); "
                        "on CPU with a fixed --seed the result equals an uninterrupted run's")
    p.add_argument("--force", action="store_true",
                   help="run again although a finished run with these settings exists (into a new numbered sibling)")
    p.add_argument("--progress", default="auto", choices=PROGRESS_MODES,
                   help="progress bars on stderr: auto (when stderr is a terminal), on, off")
    p.add_argument("-e", "--evaluate", action="store_true",
                   help="evaluate --pretrained and exit (writes <run>/eval/<time>.json only)")
    p.add_argument("--not_strict", action="store_true", help="load checkpoints skipping mismatched keys")
    p.add_argument("--ft_init", default="kaiming_normal", help="ft_reinit: weight init")
    p.add_argument("--ft_full_mode", default="all", choices=FT_FULL_MODES, help="ft_full: how pruned weights train")
    p.add_argument("--weight_decay_on_zero", type=float, default=1e-3, help="decay_on_zero: decay of pruned weights")
    p.add_argument("--lr_scale_zero", type=float, default=0.1, help="low_lr_zero: gradient scale of pruned weights")
    p.add_argument("--discard_mode", action="store_true", help="permanently drop low scores every discard_epoch")
    p.add_argument("--discard_epoch", type=int, default=10, help="discard interval (epochs)")
    p.add_argument("--discard_rate", type=float, default=0.1, help="fraction discarded per interval")
    p.add_argument("--progressive_prune", action="store_true", help="start at k=0.9 and lower k over time")
    p.add_argument("--once_for_all_list", type=float, nargs="*", default=None, help="kept fractions to share")
    p.add_argument("--all_sources", action="store_true", help="test_trans: full source x target matrix")
    p.add_argument("--r2s", action="store_true", help="test_trans: build and evaluate an R2S model")
    p.add_argument("--amp", default="none", choices=AMP_MODES, help="mixed precision on GPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")


class _Parser(argparse.ArgumentParser):
    """argparse that raises a one-line UserError instead of printing usage."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message} (see --help)")


def build_parser(prog=None):
    p = _Parser(prog=prog, description="Robust Scratch Tickets")
    for add in (_add_general, _add_optim, _add_model, _add_attack, _add_tasks):
        add(p)
    return p


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _join_negative_values(parser, argv):
    """'--lr -1e-3' -> '--lr=-1e-3': argparse only knows '-1' and '-.5' as numbers."""
    out, skip = [], False
    for i, tok in enumerate(argv):
        if skip:
            skip = False
            continue
        action = parser._option_string_actions.get(tok)
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if action is not None and action.nargs is None and action.type is not None \
                and nxt is not None and nxt.startswith("-") and _is_number(nxt):
            out.append(f"{tok}={nxt}" if tok.startswith("--") else f"{tok}{nxt}")
            skip = True
        else:
            out.append(tok)
    return out


def _given_dests(parser, argv):
    """Destinations that appear on the command line, in any spelling."""
    probe = _Parser(add_help=False)
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        kwargs = dict(dest=action.dest, default=argparse.SUPPRESS)
        if isinstance(action, argparse._StoreTrueAction):
            kwargs["action"] = "store_true"
        else:
            kwargs.update(nargs=action.nargs)
        probe.add_argument(*action.option_strings, **kwargs)
    known, _ = probe.parse_known_args(argv)
    return set(vars(known))


def _coerce(action, value, path):
    """Apply the flag's type to a YAML value (YAML reads 1e-4 as a string)."""
    if value is None or action.type is None:
        return value
    try:
        if action.type in (_int_list, _float_list) and isinstance(value, list):
            return [int(v) if action.type is _int_list else float(v) for v in value]
        if isinstance(value, list) and action.nargs in ("+", "*"):
            return [action.type(v) for v in value]
        if action.type is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return action.type(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise UserError(f"{path}: key '{action.dest}' has value {value!r}, which is not a valid "
                        f"{getattr(action.type, '__name__', 'value')}")


def load_yaml(path, parser):
    """Read a preset; return {dest: value}. Unknown keys are an error."""
    if not os.path.isfile(path):
        raise UserError(f"config file '{path}' not found")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file '{path}' is not valid YAML: {str(exc).splitlines()[0]}")
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must be a mapping of key: value")
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    out = {}
    for key, value in data.items():
        if key not in actions or key in ("config", "help"):
            near = difflib.get_close_matches(str(key), list(actions), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise UserError(f"unknown key '{key}' in {path}{hint}")
        action = actions[key]
        if action.choices is not None and action.type is _none_or_str:
            value = _none_or_str(value)
        value = _coerce(action, value, path)
        if action.choices is not None and value not in action.choices:
            raise UserError(f"{path}: key '{key}' must be one of {list(action.choices)}, got {value!r}")
        out[key] = value
    return out


def parse_config(argv=None, prog=None, parser=None):
    """Parse ``argv`` (list of strings) into the resolved config namespace."""
    parser = parser or build_parser(prog)
    argv = _join_negative_values(parser, sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    given = _given_dests(parser, argv)
    if args.config:
        for key, value in load_yaml(args.config, parser).items():
            if key not in given:
                setattr(args, key, value)
    if args.test_batch_size is None:
        args.test_batch_size = max(1, args.batch_size // 2)
    args.given = sorted(given)
    return args


def check_prune_rate(k, masked=True):
    """k is the kept fraction; a masked model needs 0 < k <= 1."""
    if masked and not (0.0 < float(k) <= 1.0):
        raise UserError(f"--prune-rate (fraction of weights kept) must be in (0, 1], got {k}; "
                        "pass e.g. --prune-rate 0.1")


def show_progress(cfg, stream=None):
    """Whether progress bars are drawn: --progress on/off, else (auto) when ``stream``
    (default stderr, where tqdm writes) is a terminal."""
    mode = getattr(cfg, "progress", "auto")
    if mode != "auto":
        return mode == "on"
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())
