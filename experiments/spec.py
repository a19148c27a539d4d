"""Figure specs and points.

A spec is ``experiments/configs/<figure>-<profile>.yaml``: flags for every point
(keys are flag destination names, as in ``config_rst/``), the architectures
(a ``config_rst/`` preset each), the kept fractions k and figure-specific parts.
A point is one ordinary run of ``main.py``, ``train_full.py`` or ``test_trans.py``:
its command line is all there is to it, and its run directory is what that
entry point computes from the parsed command line (``utils.run_dir.run_dir_for``),
so every point can be rerun or inspected by hand. Paths in commands are relative
to the repository root, where ``figures.py`` runs them.
"""
import difflib
import os
import shlex
from dataclasses import dataclass, field

import yaml

from utils.config import build_parser, parse_config
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join("experiments", "configs")
FIGURES = ("existence", "property", "application", "calibration")
PROFILES = ("smoke", "digits", "digits-eps8", "cifar10")
SPEC_KEYS = {"figure", "profile", "budget", "flags", "archs", "arch", "ks", "dense", "ablations", "finetune",
             "dense_natural", "dense_adversarial", "rtt", "transfer", "r2s", "slurm", "paper_overlay", "seeds",
             "convergence", "threads", "radii", "steps", "rule", "paper", "autoattack"}
RESULT_FILES = {"main.py": "results.json", "train_full.py": "results.json"}


def spec_path(figure, profile):
    return os.path.join(CONFIG_DIR, f"{figure}-{profile}.yaml")


def load_spec(figure, profile):
    """The figure's YAML as a dict (unknown top-level keys are an error)."""
    path = spec_path(figure, profile)
    if not os.path.isfile(os.path.join(ROOT, path)):
        raise UserError(f"no spec '{path}' for figure '{figure}' and profile '{profile}'")
    with open(os.path.join(ROOT, path)) as fh:
        spec = yaml.safe_load(fh) or {}
    for key in spec:
        if key not in SPEC_KEYS:
            near = difflib.get_close_matches(str(key), sorted(SPEC_KEYS), n=1)
            raise UserError(f"unknown key '{key}' in {path}" + (f"; did you mean '{near[0]}'?" if near else ""))
    if spec.get("figure") != figure:
        raise UserError(f"{path}: 'figure' must be '{figure}'")
    threads = spec.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise UserError(f"{path}: 'threads' must be a whole number >= 1, not {threads!r}")
    spec["path"] = path
    return spec


def _options():
    """dest -> (option string, action) of the shared entry-point parser."""
    out = {}
    for action in build_parser()._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in out:
            out[action.dest] = (longs[0], action)
    return out


def flag_args(flags, where="spec", script=None):
    """``{dest: value}`` -> command-line tokens (``prune_rate: 0.1`` -> ``--prune-rate 0.1``).
    With ``script``, flags that entry point does not take (a figure's flags are shared by
    main.py, train_full.py and test_trans.py) are left out: it would not use them."""
    options, argv = _options(), []
    taken = {a.dest for a in build_parser(script)._actions} if script else set(options)
    for dest, value in (flags or {}).items():
        if dest not in options or dest in ("config", "help"):
            near = difflib.get_close_matches(str(dest), sorted(options), n=1)
            raise UserError(f"unknown flag key '{dest}' in {where}" + (f"; did you mean '{near[0]}'?" if near else ""))
        if dest not in taken:
            continue
        opt, action = options[dest]
        if action.nargs == 0:  # store_true
            argv += [opt] if value else []
        elif value is None:
            argv += [opt, "None"]
        elif isinstance(value, (list, tuple)):
            argv += [opt, *map(str, value)] if action.nargs in ("*", "+") else [opt, ",".join(map(str, value))]
        else:
            argv += [opt, str(value)]
    return argv


def merged(*dicts):
    out = {}
    for d in dicts:
        out.update(d or {})
    return out


@dataclass
class Point:
    """One run. ``fields`` are the CSV columns that place it in the figure; ``base`` is the
    point's id without its seed (the summary row's key), ``seed`` its ``--seed``."""
    id: str
    stage: str
    script: str
    argv: list
    task: str
    result: str
    fields: dict = field(default_factory=dict)
    base: str = None
    seed: int = None
    threads: int = None

    def command(self, python="python"):
        """The shell command that reruns the point (``OMP_NUM_THREADS=n`` first when the spec fixes
        the thread count: CPU float sums depend on it, so the numbers do)."""
        env = f"OMP_NUM_THREADS={self.threads} " if self.threads else ""
        return env + shlex.join([python, self.script, *self.argv])

    def config(self):
        """The config the entry point will resolve (train_full.py forces k = 1, as it does)."""
        cfg = parse_config(list(self.argv), prog=self.script)
        if self.script == "train_full.py":
            cfg.prune_rate = 1.0
        return cfg

    def run_dir(self):
        from utils.run_dir import run_dir_for
        return run_dir_for(self.config(), self.task)

    def result_path(self):
        return os.path.join(self.run_dir(), self.result)


def training_point(pid, stage, config, flags, *, task="search", name, log_dir, k=None, pretrained=None,
                   fields=None):
    """A main.py point (``task``) or, with ``task='train_full'``, a train_full.py point."""
    script = "train_full.py" if task == "train_full" else "main.py"
    argv = ["--config", config] + flag_args(flags, f"the flags of point {pid}", script)
    argv += ["--name", name, "--log-dir", log_dir]
    if task != "train_full":
        argv += ["--task", task, "--prune-rate", f"{k:g}"]
    if pretrained:
        argv += ["--pretrained", pretrained]
    argv += ["--automatic_resume"]
    return Point(pid, stage, script, argv, task, RESULT_FILES[script], dict(fields or {}, k=k if k else 1.0))


def transfer_point(pid, stage, config, flags, *, name, log_dir, source, source_k, mode, fields=None):
    """A test_trans.py point: ``mode`` 'matrix' (--all_sources), 'r2s', or 'single' (the source alone: its
    natural and white-box ``--eval_attack`` accuracy, e.g. AutoAttack; a folder holding one checkpoint)."""
    argv = ["--config", config] + flag_args(flags, f"the flags of point {pid}", "test_trans.py")
    argv += ["--name", name, "--log-dir", log_dir, "--prune-rate", f"{source_k:g}", "--pretrained", source]
    argv += {"matrix": ["--all_sources"], "r2s": ["--r2s"], "single": []}[mode]
    result = "r2s.json" if mode == "r2s" else "transfer_matrix.json"
    return Point(pid, stage, "test_trans.py", argv, "transfer", result, dict(fields or {}))


def spec_seeds(spec, override=None):
    """The seeds every point is repeated with: 0..N-1, N from ``--seeds`` or the spec's ``seeds`` (1)."""
    n = override if override is not None else spec.get("seeds", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise UserError(f"seeds must be a positive integer, got {n!r} ({spec['path']} or --seeds)")
    return list(range(n))


def unique_points(points):
    """Points with distinct run directories, in order (panels may share runs)."""
    seen, out = {}, []
    for p in points:
        key = (p.run_dir(), p.result)
        if key in seen:
            if _differs(seen[key], p):
                raise UserError(f"points {seen[key].id} and {p.id} share {key[0]} with other settings")
            continue
        seen[key] = p
        out.append(p)
    return out


def _differs(a, b):
    from utils.run_dir import config_dict
    da, db = config_dict(a.config()), config_dict(b.config())
    return any(str(da.get(k)) != str(db.get(k)) for k in set(da) | set(db))
