"""Which folder a new run may use: never one that holds another run.

The folder computed from the flags (``utils.run_dir.run_dir_for``) is used when it
is free, or when it holds this same run (same settings, see ``settings_diff``) and

* that run has no checkpoint yet (nothing there to lose), or
* --automatic_resume / --resume continues it (it is unfinished, or ``RESUME_MAY_CHANGE``
  settings differ: the evaluation protocol, then the loop re-measures, or --epochs;
  a folder without settings.txt, written by an older version, is continued too: the
  checkpoint is checked when it loads).

A finished run with the same settings is not run again (``Decision.finished``),
unless --force. Anything else (other settings, an unfinished run without a resume
flag, a folder without settings.txt) sends the run to the first numbered sibling of
--name that is free or holds this same run: ``<name>-2``, ``<name>-3``, ...
(``runs/<stem>/exp_name-2/prune_rate=0.1/search/``). --name itself keeps naming the
family: ``ft_*`` tasks without --pretrained take the search run of the name given.
test_trans.py follows the same rule for its ``transfer`` folder (a finished run there is one
with its report file; it has no checkpoints, so a same-settings folder is reused).
"""
import os
from dataclasses import dataclass

from utils.errors import UserError

# settings.txt keys that do not change a run's numbers (or name paths that may move).
# experiments/runner.py judges figure points by the same rule.
IGNORED_SETTINGS = {"automatic_resume", "resume", "workers", "print_freq", "multigpu", "data", "log_dir",
                    "save_every", "compile", "channels_last", "start_epoch", "download", "name", "force",
                    "progress", "evaluate", "seed_drawn"}
# a resumed run may change these: the evaluation protocol (it re-measures under the new one,
# evaluation.validation.reevaluate_if_changed; --val_split is refused there) and --epochs (a run is
# extended, as the original's resume allows)
RESUME_MAY_CHANGE = {"eval_attack", "n_eval", "aa_steps", "aa_queries", "val_split", "amp", "epochs"}
MAX_SIBLINGS = 1000


def read_settings(path):
    """settings.txt -> {key: value as written}."""
    out = {}
    with open(path) as fh:
        for line in fh:
            key, sep, value = line.rstrip("\n").partition(": ")
            if sep:
                out[key] = value
    return out


def settings_diff(run_dir, cfg, label="now", ignored=IGNORED_SETTINGS):
    """``['key: stored (run) vs wanted (<label>)', ...]`` between ``run_dir``'s settings.txt and
    ``cfg``; ``None`` when there is no settings.txt. Keys only one side knows are skipped
    (a run written by an older version)."""
    from utils.run_dir import config_dict
    path = os.path.join(run_dir, "settings.txt")
    if not os.path.isfile(path):
        return None
    stored, wanted = read_settings(path), config_dict(cfg)
    if wanted.get("seed") is None and stored.get("seed_drawn") == "True":
        ignored = set(ignored) | {"seed"}  # no --seed either time: that run's seed was drawn, as this one's will be
    return [f"{k}: {stored[k]} (run) vs {wanted[k]} ({label})" for k in sorted(set(stored) & set(wanted))
            if k not in ignored and stored[k] != str(wanted[k])]


def _keys(diff):
    return {line.split(":", 1)[0] for line in diff}


@dataclass
class Decision:
    dir: str                 # where this run goes
    name: str                # the --name of that folder (``exp_name`` or ``exp_name-N``)
    finished: bool = False   # a finished run with these settings is there: nothing to do
    reason: str = ""         # why not the folder the flags name (empty when it is that one)


def _has_files(path):
    return os.path.isdir(path) and any(os.scandir(path))


def _verdict(run_dir, cfg, result="results.json"):
    """'free', 'finished', 'reuse' or a reason why ``run_dir`` cannot take this run (``result``: the
    file a finished run of this kind leaves)."""
    if not _has_files(run_dir):
        return "free"
    diff = settings_diff(run_dir, cfg)
    resuming = bool(cfg.automatic_resume or cfg.resume)
    finished = os.path.isfile(os.path.join(run_dir, result))
    started = os.path.isfile(os.path.join(run_dir, "checkpoints", "model_latest.pth"))
    if diff is None:  # no settings.txt (an older version's run): only an explicit resume continues it
        return "reuse" if resuming and started and not finished else "it holds files but no settings.txt"
    if diff and not (resuming and (started or finished) and _keys(diff) <= RESUME_MAY_CHANGE):
        return "it holds a run with other settings (" + "; ".join(diff[:3]) + ")"
    if finished and not diff:
        return "finished"
    if resuming or not started:
        return "reuse"
    return "it holds an unfinished run with these settings; add --automatic_resume to continue it there"


def choose_run_dir(cfg, task, result="results.json"):
    """The ``Decision`` for a run of ``task`` (see the module docstring); ``result`` is the file its
    finished run leaves (test_trans.py: transfer_matrix.json or r2s.json)."""
    from utils.run_dir import run_dir_for
    base = cfg.name or "default"
    first = run_dir_for(cfg, task)
    reason = ""
    for n in range(1, MAX_SIBLINGS + 1):
        name = base if n == 1 else f"{base}-{n}"
        path = first if n == 1 else run_dir_for(cfg, task, name=name)
        verdict = _verdict(path, cfg, result)
        if verdict == "finished" and not getattr(cfg, "force", False):
            return Decision(path, name, finished=True, reason=reason)
        if verdict in ("free", "reuse"):
            return Decision(path, name, reason=reason)
        if n == 1:
            reason = f"{first}: " + ("a finished run with these settings is there (--force)"
                                     if verdict == "finished" else verdict)
    raise UserError(f"no free sibling of {first} among {MAX_SIBLINGS} numbered ones: choose another --name")
