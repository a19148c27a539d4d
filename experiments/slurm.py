"""SLURM job arrays: one ``sbatch --array`` script per figure stage, a collect job, a submit script.

Each array task runs one point: the same command ``figures.py`` runs locally
(with ``--automatic_resume``), started with ``srun`` so that Slurm's SIGTERM
before the time limit reaches it (the run saves a checkpoint and exits 0 without
results.json). The task then asks ``figures.py --check INDEX`` whether the point
finished; if not, it requeues itself (``scontrol requeue``), so the stage's job
stays unfinished and the next stage (``--dependency=afterok``) waits. A point
that fails (non-zero exit) is not requeued: its task fails, so its stage fails and
Slurm cancels the stages after it (``--kill-on-invalid-dep=yes``), never leaving
them pending. The collect job runs after every stage ended in any state
(``afterany``), draws what finished, then ``figures.py --check-all`` lists every
point not finished and fails the job if there is one. A point already finished
exits at once, so rerunning ``submit.sh`` is safe.

Setup commands (``--slurm-setup``, or the spec's ``slurm: {setup: ...}``: module
load, conda or venv activation) run at the top of every job script. Memory:
``mem`` is one value or ``{stage: value, default: value}``; the collect job uses
``collect_mem`` (default 4G: it only reads results and draws).
"""
import difflib
import os
import shlex
import shutil
import stat
import subprocess

from utils.errors import UserError

DEFAULTS = {"time": "24:00:00", "gpus": 1, "cpus_per_task": 8, "mem": "32G", "partition": None, "account": None,
            "collect_time": "00:30:00", "collect_mem": "4G", "setup": None}


def stage_mem(options, stage):
    """``mem`` of a stage: one value for all, or ``{stage: value, 'default': value}``."""
    mem = options["mem"]
    if isinstance(mem, dict):
        return mem.get(stage, mem.get("default", DEFAULTS["mem"]))
    return mem


def setup_lines(options):
    """The setup commands, each in the job's own shell (so ``source``/``conda activate`` last),
    a failure ending the job with a message."""
    setup = options.get("setup") or []
    lines = []
    for cmd in [setup] if isinstance(setup, str) else setup:
        lines += ["{", f"  {cmd}", f"}} || {{ echo {shlex.quote('slurm setup failed: ' + cmd)} >&2; exit 1; }}"]
    return lines


def _header(name, options, log_dir, array=None, gpus=True, stage=None):
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}"]
    if array is not None:
        lines.append(f"#SBATCH --array=0-{array - 1}")
    lines += [f"#SBATCH --time={options['time'] if gpus else options['collect_time']}",
              f"#SBATCH --cpus-per-task={options['cpus_per_task'] if gpus else 2}",
              f"#SBATCH --mem={stage_mem(options, stage) if gpus else options['collect_mem']}",
              f"#SBATCH --output={log_dir}/%x-{'%A_%a' if array is not None else '%j'}.out"]
    if gpus:
        lines += [f"#SBATCH --gpus={options['gpus']}", "#SBATCH --signal=TERM@120", "#SBATCH --requeue"]
    lines += [f"#SBATCH --partition={options['partition']}"] * bool(options.get("partition"))
    lines += [f"#SBATCH --account={options['account']}"] * bool(options.get("account"))
    return lines


def figure_args(figure, profile, out):
    return ["experiments/figures.py", figure, "--profile", profile, "--out", out]


def stage_script(name, stage, points, options, log_dir, fig_args, prepare):
    """The array script of one stage: a ``case`` arm per point (its literal command)."""
    lines = _header(name, options, log_dir, array=len(points), stage=stage) + [""] + setup_lines(options)
    lines += ["set -euo pipefail", f"cd {shlex.quote(options['root'])}", 'PYTHON="${PYTHON:-python}"',
              f"WORKERS=\"${{WORKERS:-${{SLURM_CPUS_PER_TASK:-{options['cpus_per_task']}}}}}\"", ""]
    if points and points[0].threads:
        lines.append(f"export OMP_NUM_THREADS={points[0].threads}  # the spec's threads: the numbers depend on it")
    if prepare:
        lines.append(f'"$PYTHON" {shlex.join(fig_args)} --prepare {stage}')
    lines.append('case "$SLURM_ARRAY_TASK_ID" in')
    for i, p in enumerate(points):
        lines.append(f"  {i}) cmd=({shlex.join([p.script, *p.argv])}) ;;  # {p.id}")
    lines += ['  *) echo "no point $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac",
              'status=0',
              'srun --ntasks=1 "$PYTHON" "${cmd[@]}" --workers "$WORKERS" || status=$?',
              'if [ "$status" -ne 0 ]; then',
              '  echo "point $SLURM_ARRAY_TASK_ID failed (exit $status): not requeued; later stages are cancelled" >&2',
              '  exit "$status"',
              'fi',
              f'if ! "$PYTHON" {shlex.join(fig_args)} --check "$SLURM_ARRAY_TASK_ID" --stage {stage}; then',
              '  echo "point $SLURM_ARRAY_TASK_ID not finished: requeued" >&2',
              '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" || exit 3',
              "fi", ""]
    return "\n".join(lines)


def collect_script(name, options, log_dir, fig_args):
    lines = _header(name, options, log_dir, gpus=False) + [""] + setup_lines(options)
    lines += ["set -euo pipefail", f"cd {shlex.quote(options['root'])}", 'PYTHON="${PYTHON:-python}"',
              f'"$PYTHON" {shlex.join(fig_args)} --collect-only',
              f'"$PYTHON" {shlex.join(fig_args)} --check-all  # fails the job, listing every point not finished', ""]
    return "\n".join(lines)


def submit_script(files):
    """Submit in order: each stage after the previous one succeeded (afterok; Slurm cancels it
    if that one failed: --kill-on-invalid-dep=yes); the last file, the collect job, after every
    stage ended in any state (afterany), so it always runs, draws what finished and reports the rest."""
    lines = ["#!/bin/bash", "# Submits the figure's stages in order: each stage after the previous one succeeded",
             "# (afterok; cancelled if it failed); the collect job after every stage ended (afterany),",
             "# reporting any point not finished. Rerunning is safe.",
             "set -euo pipefail", 'cd "$(dirname "$0")"', "dep=()"]
    for i, f in enumerate(files):
        lines += [f'j{i}=$(sbatch --parsable ${{dep[@]+"${{dep[@]}}"}} {shlex.quote(os.path.basename(f))})',
                  f'j{i}="${{j{i}%%;*}}"', f'echo "{os.path.basename(f)}: job $j{i}"']
        if i + 2 < len(files):
            lines.append(f'dep=(--dependency=afterok:"$j{i}" --kill-on-invalid-dep=yes)')
        elif i + 2 == len(files):
            stages = ":".join(f'"$j{j}"' for j in range(i + 1))
            lines.append(f"dep=(--dependency=afterany:{stages})")
    return "\n".join(lines) + "\n"


def _write(path, text):
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def write_scripts(figure, profile, out, stages, spec, needs_prepare, setup=(), dry_run=False):
    """``<out>/<figure>/slurm/NN-<stage>.sbatch``, ``NN-collect.sbatch`` and ``submit.sh``; returns
    ``([(path, text), ...], submit.sh path)``. ``setup``: commands for the top of every job (they
    replace the spec's). ``dry_run``: nothing is written (no folder either)."""
    for key in spec.get("slurm") or {}:
        if key not in DEFAULTS:
            near = difflib.get_close_matches(str(key), sorted(DEFAULTS), n=1)
            raise UserError(f"unknown key '{key}' in the spec's slurm: entry"
                            + (f"; did you mean '{near[0]}'?" if near else ""))
    options = dict(DEFAULTS, **(spec.get("slurm") or {}), root=os.path.abspath("."))
    if setup:
        options["setup"] = list(setup)
    folder = os.path.join(out, figure, "slurm")
    log_dir = os.path.join(folder, "logs")
    fig_args = figure_args(figure, profile, out)
    scripts = []
    for i, (stage, points) in enumerate(stages):
        text = stage_script(f"rst-{figure}-{stage}", stage, points, options, log_dir, fig_args, stage in needs_prepare)
        scripts.append((os.path.join(folder, f"{i:02d}-{stage}.sbatch"), text))
    scripts.append((os.path.join(folder, f"{len(stages):02d}-collect.sbatch"),
                    collect_script(f"rst-{figure}-collect", options, log_dir, fig_args)))
    submit_path = os.path.join(folder, "submit.sh")
    scripts.append((submit_path, submit_script([p for p, _ in scripts])))
    if not dry_run:
        os.makedirs(log_dir, exist_ok=True)
        for path, text in scripts:
            _write(path, text)
    return scripts, submit_path


def submit(path):
    """Run submit.sh (needs sbatch on PATH)."""
    if shutil.which("sbatch") is None:
        raise UserError("--submit needs SLURM's sbatch on PATH (not found); the scripts are written: "
                        f"run {path} on the cluster's login node")
    return subprocess.run(["bash", path], check=False).returncode
