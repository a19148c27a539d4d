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
``--spawn`` execs a fresh interpreter per point instead. ``--jobs N`` runs up to N
points of a stage at once, each with the spec's ``threads`` if it fixes them, else
cores/N threads (unless OMP_NUM_THREADS is set): small models use one core better than two.
"""
import json
import logging
import os
import runpy
import sys
import time

from utils.errors import UserError

log = logging.getLogger("rst.figures")


def settings_diff(point):
    """Keys whose value in the run's settings.txt differs from the point's resolved config: the rule
    by which main.py itself refuses a folder (``utils.run_guard``), so a point never lands in a sibling."""
    from utils.run_guard import settings_diff as diff
    return diff(point.run_dir(), point.config(), label="figure") or []


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
    import evaluation.transfer  # noqa: F401


def _child(point, log_path, spawn, threads):
    """In a forked child: run the point as ``python script argv`` would, output to ``log_path``."""
    code = 1
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        if spawn:
            env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else os.environ
            os.execve(sys.executable, [sys.executable, point.script, *point.argv], env)
        if threads:
            import torch
            torch.set_num_threads(threads)
        sys.argv = [point.script, *point.argv]
        runpy.run_path(point.script, run_name="__main__")
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


def start(point, log_path, spawn=False, threads=None):
    """Start one point in a child process; returns its pid."""
    with open(log_path, "a") as fh:
        fh.write(f"$ {point.command()}\n")
    pid = os.fork()
    if pid == 0:
        _child(point, log_path, spawn, threads)
    return pid


def _duration(seconds):
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def log_tail(path, lines=5):
    try:
        with open(path, errors="replace") as fh:
            return " | ".join(line.strip()[-200:] for line in fh.read().splitlines()[-lines:])
    except OSError:
        return ""


class Progress:
    """Progress lines: done / skipped / running, elapsed time and ETA (mean time per point run so far,
    times the points left, divided by the parallel jobs)."""

    def __init__(self, points, todo, jobs):
        self.index = {id(p): i for i, p in enumerate(points, 1)}
        self.total, self.todo, self.jobs = len(points), todo, jobs
        self.start, self.times = time.time(), []

    def head(self, p):
        return f"[{self.index[id(p)]}/{self.total}] {p.id}"

    def eta(self):
        if not self.times:
            return "?"
        return _duration(sum(self.times) / len(self.times) * (self.todo - len(self.times)) / self.jobs)

    def line(self, p, what):
        log.info("%s: %s (elapsed %s, ETA %s)", self.head(p), what, _duration(time.time() - self.start), self.eta())


def run_stage(todo, logs, progress, spawn, jobs, threads):
    """Run ``todo`` [(point, status)] with up to ``jobs`` children at once; raise after the
    running ones end if any failed."""
    queue, running, failed = list(todo), {}, []
    while queue or running:
        while queue and len(running) < jobs and not failed:
            p, status = queue.pop(0)
            log_path = os.path.join(logs, p.id.replace("/", "_") + ".log")
            running[start(p, log_path, spawn, threads)] = (p, time.time(), log_path)
            progress.line(p, "running (resuming)" if status == "resume" else "running")
        if not running:
            break
        pid, status = os.waitpid(-1, 0)
        if pid not in running:
            continue
        p, t0, log_path = running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            failed.append(f"point {p.id} failed (exit {code}); log {log_path}: {log_tail(log_path)}")
        elif point_status(p) != "done":
            failed.append(f"point {p.id} ended without a finished {p.result} (interrupted?)")
        else:
            progress.times.append(time.time() - t0)
            progress.line(p, f"done in {_duration(progress.times[-1])}")
    if failed:
        raise UserError("; ".join(failed) + "; rerun the same command to continue (finished points are skipped)")


def run_points(points, fig_dir, prepare=None, spawn=False, jobs=1):
    """Run every unfinished point, stage by stage (a stage's points may run ``jobs`` at a time), each
    with the spec's ``threads`` if it sets them, else cores/jobs threads."""
    statuses = [point_status(p) for p in points]  # every settings conflict is found before any run
    todo = sum(s != "done" for s in statuses)
    logs = os.path.join(fig_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    if todo and not spawn:
        preload()
    threads = points[0].threads if points else None
    if threads is None and jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // jobs)  # jobs x threads = cores
    progress = Progress(points, todo, jobs)
    for stage in dict.fromkeys(p.stage for p in points):
        mine = [(p, s) for p, s in zip(points, statuses) if p.stage == stage]
        for p, s in mine:
            if s == "done":
                log.info("%s: skipped (finished: %s)", progress.head(p), p.result_path())
        pending = [(p, s) for p, s in mine if s != "done"]
        if pending and prepare is not None:
            prepare(stage)
        run_stage(pending, logs, progress, spawn, max(1, jobs), threads)
    return time.time() - progress.start
