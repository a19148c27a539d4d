"""Command-line and YAML configuration: built-in default < YAML preset < CLI.

``parse_config(argv, prog)`` is called once by an entry point; the returned
``argparse.Namespace`` is the resolved config passed down to every stage. Each
entry point has its own parser listing only its flags (``utils.flags``), in help
groups with defaults shown; the namespace still has every attribute (the other
flags at their defaults), so code downstream never depends on who parsed.
Every long flag is accepted with dashes or underscores (``--batch-size`` is
``--batch_size``); an unknown flag gets a "did you mean". Nothing here runs at
import time.
"""
import argparse
import difflib
import os
import sys

import yaml

from utils import flags
from utils.errors import UserError
from utils.flags import ATTACK_TYPES, TASKS, FT_FULL_MODES, AMP_MODES  # noqa: F401  (re-exported)
from utils.flags import _float_list, _int_list, _none_or_str

DESCRIPTIONS = {
    "main": "Search Robust Scratch Tickets (--task search) and fine-tune them (ft_inherit, ft_reinit, ft_full).",
    "train_full": "Dense (natural or adversarial) training; its checkpoint is a --pretrained for an RTT search.",
    "test_trans": "Transferability between tickets (source x target matrices) and the R2S defence.",
    "demo": "First-run demo: an RST search and dense adversarial training on Digits; flags go to both runs.",
    None: "Robust Scratch Tickets",
}


class _Parser(argparse.ArgumentParser):
    """argparse that raises a one-line UserError instead of printing usage."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message} (see --help)")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is empty (None, off) or the help text already says it."""

    def _get_help_string(self, action):
        if action.default in (None, False, "", argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def entry_of(prog):
    """'main.py', 'scripts/demo.py', ... -> 'main', 'demo'; anything else None (every flag)."""
    name = os.path.splitext(os.path.basename(prog or ""))[0]
    return name if name in flags.ENTRIES else None


def build_parser(prog=None, entry=None):
    """The parser of ``prog``'s entry point (every flag when it is not one of ``flags.ENTRIES``)."""
    entry = entry or entry_of(prog)
    p = _Parser(prog=os.path.basename(prog) if prog else None, description=DESCRIPTIONS[entry],
                formatter_class=_Formatter,
                epilog="Every long flag may be spelled with dashes or underscores (--batch-size = --batch_size); "
                       "YAML keys are the destination names (prune_rate, batch_size, ...).")
    return flags.add_flags(p, entry)


def spelling_key(option):
    """'--prune_rate' and '--prune-rate' -> 'prune-rate' (one key for both spellings)."""
    return option.lstrip("-").replace("_", "-")


def long_options(parser):
    """{spelling key: option string as defined} for every long option of ``parser``."""
    out = {}
    for option in parser._option_string_actions:
        if option.startswith("--"):
            out.setdefault(spelling_key(option), option)
    for action in parser._actions:  # the destination name is a spelling too (as in YAML)
        if action.option_strings and action.dest != "help":
            out.setdefault(spelling_key(action.dest), action.option_strings[-1])
    return out


def normalize_spellings(parser, argv):
    """Rewrite each long flag to its defined spelling ('--batch-size=8' -> '--batch_size=8')."""
    known = long_options(parser)
    out = []
    for tok in argv:
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok.partition("=")
            canonical = known.get(spelling_key(name))
            if canonical and name not in parser._option_string_actions:
                tok = canonical + eq + value
        out.append(tok)
    return out


def unknown_flag_error(parser, entry, token):
    """A UserError for an unknown flag: whose flag it is, or the closest of this parser's."""
    name = token.split("=", 1)[0]
    full = long_options(build_parser())
    prog = parser.prog or "this command"
    if spelling_key(name) in full:
        dest = build_parser()._option_string_actions[full[spelling_key(name)]].dest
        owners = [f"{e}.py" for e in flags.entries_of(dest)]
        return UserError(f"{name} would be ignored: it is a {' / '.join(owners)} flag ({prog} does not take it)")
    ours = long_options(parser)
    near = difflib.get_close_matches(spelling_key(name), list(ours), n=1, cutoff=0.6)
    hint = f"; did you mean '{ours[near[0]]}'?" if near else ""
    return UserError(f"{prog}: unknown flag '{name}'{hint} (see --help)")


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
                        f"{getattr(action.type, '__name__', 'value').lstrip('_')}")


def load_yaml(path, parser=None):
    """Read a preset; return {dest: value}. Keys are any entry point's destinations (presets are
    shared by main.py, train_full.py and test_trans.py); unknown keys are an error."""
    parser = build_parser()  # every flag: a preset is shared by every entry point
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


def _parse(parser, entry, argv):
    args, extra = parser.parse_known_args(argv)
    for tok in extra:
        if tok.startswith("--") or (tok.startswith("-") and not _is_number(tok)):
            raise unknown_flag_error(parser, entry, tok)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def parse_config(argv=None, prog=None, parser=None):
    """Parse ``argv`` (list of strings) into the resolved, validated config namespace."""
    entry = entry_of(prog)
    parser = parser or build_parser(prog, entry)
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    argv = _join_negative_values(parser, normalize_spellings(parser, argv))
    args = _parse(parser, entry, argv)
    for action in build_parser()._actions:  # flags this entry point does not take: their defaults
        if action.option_strings and action.dest != "help" and not hasattr(args, action.dest):
            setattr(args, action.dest, action.default)
    given = _given_dests(parser, argv)
    if args.config:
        for key, value in load_yaml(args.config).items():
            if key not in given:
                setattr(args, key, value)
    if args.test_batch_size is None:
        args.test_batch_size = max(1, args.batch_size // 2)
    args.given = sorted(given)
    from utils.validate import check_values
    check_values(args, entry)
    return args


def check_prune_rate(k, masked=True):
    """k is the kept fraction; a masked model needs 0 < k <= 1. The flag's default 0.0 (the
    original's) and a preset's -1 both mean "not given": say which flag to pass."""
    if not masked:
        return
    if float(k) == 0.0:
        raise UserError("--prune-rate is required: the fraction of weights kept in each masked layer, "
                        "in (0, 1] (e.g. --prune-rate 0.1); no flag, preset or checkpoint gave it")
    if float(k) == -1.0:
        raise UserError("the preset sets prune_rate: -1, which asks you to choose k: pass --prune-rate K, "
                        "the fraction of weights kept, in (0, 1] (e.g. --prune-rate 0.1)")
    if not 0.0 < float(k) <= 1.0:
        raise UserError(f"--prune-rate (fraction of weights kept) must be in (0, 1], got {k:g}; "
                        "pass e.g. --prune-rate 0.1")


def show_progress(cfg, stream=None):
    """Whether progress bars are drawn: --progress on/off, else (auto) when ``stream``
    (default stderr, where tqdm writes) is a terminal."""
    mode = getattr(cfg, "progress", "auto")
    if mode != "auto":
        return mode == "on"
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())
