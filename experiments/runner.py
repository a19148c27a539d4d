"""Running points on this machine, one after another, resumably.

A point is finished when its result file exists, is newer than its
``settings.txt`` (a run rewrites settings.txt when it starts, and writes the
result file when it ends) and agrees with the point's command line (settings.txt,
and results.json's task, k and epochs). A run directory whose settings.txt
disagrees with the point is an error (we never overwrite another experiment's
checkpoints); anything else unfinished runs with ``--automatic_resume``.

Each point runs as its entry script would from the shell (``python main.py ...``):
by default in a forked child of this process, which has imported the entry points
once (saves the interpreter and torch start-up, ~3 s a point), with the script
executed as ``__main__`` and its output in ``<figure dir>/logs/<point>.log``;
``--spawn`` starts a fresh interpreter per point instead.
"""
import json
import logging
import os
import runpy
import subprocess
import sys
import time

from utils.errors import UserError

log = logging.getLogger("rst.figures")
# settings.txt keys that do not change a run's numbers (or that name paths which may move)
IGNORED_SETTINGS = {"automatic_resume", "resume", "workers", "print_freq", "multigpu", "data", "log_dir",
                    "save_every", "pretrained", "compile", "channels_last", "start_epoch", "download"}


def read_settings(path):
    out = {}
    with open(path) as fh:
        for line in fh:
            key, sep, value = line.rstrip("\n").partition(": ")
            if sep:
                out[key] = value
    return out


def settings_diff(point):
    """Keys whose value in the run's settings.txt differs from the point's resolved config."""
    from utils.run_dir import config_dict
    path = os.path.join(point.run_dir(), "settings.txt")
    if not os.path.isfile(path):
        return []
    stored, wanted = read_settings(path), config_dict(point.config())
    return [f"{k}: {stored[k]} (run) vs {wanted[k]} (figure)" for k in sorted(set(stored) & set(wanted))
            if k not in IGNORED_SETTINGS and stored[k] != str(wanted[k])]


def result_ok(point, data):
    """The result file's own fields agree with the point (results.json of main.py/train_full.py)."""
    if point.result != "results.json":
        return True
    cfg = point.config()
    return (data.get("task") == point.task and data.get("epochs_done") == cfg.epochs
            and abs(float(data.get("prune_rate") or 0) - float(cfg.prune_rate)) < 1e-9)


def point_status(point):
    """'done', 'resume' (a run was started) or 'new'; UserError if the run has other settings."""
    run_dir = point.run_dir()
    settings, result = os.path.join(run_dir, "settings.txt"), os.path.join(run_dir, point.result)
    diff = settings_diff(point)
    if diff:
        raise UserError(f"{run_dir} holds a run with other settings than point {point.id} ({'; '.join(diff[:3])}): "
                        "delete that folder or choose another --out")
    if os.path.isfile(result) and os.path.isfile(settings) and os.path.getmtime(result) >= os.path.getmtime(settings):
        try:
            with open(result) as fh:
                if result_ok(point, json.load(fh)):
                    return "done"
        except (OSError, ValueError):
            pass
    return "resume" if os.path.isdir(run_dir) else "new"


def preload():
    """Import what the entry points import, once, before forking children (no torch op runs
    here: OpenMP's thread pool must not exist before a fork)."""
    import sklearn.datasets  # noqa: F401  (Digits; the slowest import)
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    import main  # noqa: F401
    import train_full  # noqa: F401
    import test_trans  # noqa: F401
    import trainers.loop  # noqa: F401
    import trainers.transfer  # noqa: F401


def _child(script, argv, log_path):
    """In a forked child: run ``script`` as ``python script argv`` would, output to ``log_path``."""
    code = 1
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.argv = [script, *argv]
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001  (as the interpreter would: traceback, exit 1)
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def launch(point, log_path, spawn=False):
    """Run one point to completion; returns its exit status."""
    with open(log_path, "a") as fh:
        fh.write(f"$ {point.command()}\n")
    if spawn or not hasattr(os, "fork"):
        with open(log_path, "a") as fh:
            return subprocess.run([sys.executable, point.script, *point.argv], stdout=fh,
                                  stderr=subprocess.STDOUT).returncode
    pid = os.fork()
    if pid == 0:
        _child(point.script, point.argv, log_path)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def log_tail(path, lines=5):
    try:
        with open(path, errors="replace") as fh:
            return " | ".join(line.strip()[-200:] for line in fh.read().splitlines()[-lines:])
    except OSError:
        return ""


def run_points(points, fig_dir, prepare=None, spawn=False):
    """Run every unfinished point in order (stage by stage); progress and ETA per point."""
    statuses = [point_status(p) for p in points]  # every settings conflict is found before any run
    todo = sum(s != "done" for s in statuses)
    logs = os.path.join(fig_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    if todo and not spawn:
        preload()
    start, ran, stage = time.time(), [], None
    for i, (p, status) in enumerate(zip(points, statuses), 1):
        head = f"[{i}/{len(points)}] {p.id}"
        if status == "done":
            log.info("%s: skipped (finished: %s)", head, p.result_path())
            continue
        if p.stage != stage and prepare is not None:
            prepare(p.stage)
        stage = p.stage
        left = todo - len(ran)
        eta = _duration(sum(ran) / len(ran) * left) if ran else "?"
        log.info("%s: running%s (elapsed %s, ETA %s)", head, " (resuming)" if status == "resume" else "",
                 _duration(time.time() - start), eta)
        t0 = time.time()
        log_path = os.path.join(logs, p.id.replace("/", "_") + ".log")
        code = launch(p, log_path, spawn)
        if code != 0:
            raise UserError(f"point {p.id} failed (exit {code}); log {log_path}: {log_tail(log_path)}; "
                            "rerun the same command to continue (finished points are skipped)")
        if point_status(p) != "done":
            raise UserError(f"point {p.id} ended without a finished {p.result} (interrupted?); rerun to continue")
        ran.append(time.time() - t0)
        log.info("%s: done in %s (elapsed %s, ETA %s)", head, _duration(ran[-1]), _duration(time.time() - start),
                 _duration(sum(ran) / len(ran) * (todo - len(ran))))
    return time.time() - start
