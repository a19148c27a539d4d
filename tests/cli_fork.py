"""Run many entry-point invocations for tests: import once, then fork one child per invocation.

Each child runs the entry script exactly as ``python <script> <args>`` would: the
file is executed as ``__main__`` (runpy) with the real ``sys.argv``, its stdout and
stderr are redirected to files at the descriptor level, and its exit status is the
script's (an uncaught exception prints a traceback and gives 1, as Python would).
Only the interpreter and library start-up (about 3 s each, mostly torch and
torchvision) is shared, which keeps table-driven CLI tests fast.

Usage: ``python tests/cli_fork.py JOBS.json`` where JOBS.json is a list of
``{"script", "args", "stdout", "stderr", "timeout"}``; prints the list of exit
statuses (negative: killed by that signal) as JSON on stdout.
"""
import json
import os
import runpy
import signal
import sys
import traceback


def preload():
    """Import what every entry point imports, before forking (the expensive part)."""
    import main  # noqa: F401
    import train_full  # noqa: F401
    import trainers.loop  # noqa: F401
    if os.path.exists("test_trans.py"):
        import test_trans  # noqa: F401
        import evaluation.transfer  # noqa: F401
    import sklearn.datasets  # noqa: F401  (Digits)


def child(job):
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    signal.alarm(int(job.get("timeout", 240)))  # a hung child dies of SIGALRM
    sys.argv = [job["script"], *map(str, job["args"])]
    code = 0
    try:
        runpy.run_path(job["script"], run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(path):
    with open(path) as fh:
        jobs = json.load(fh)
    preload()
    statuses = []
    for job in jobs:
        pid = os.fork()
        if pid == 0:
            child(job)
        _, status = os.waitpid(pid, 0)
        statuses.append(os.waitstatus_to_exitcode(status))
    sys.stdout.write(json.dumps(statuses) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
