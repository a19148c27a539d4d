"""SLURM job arrays: one ``sbatch --array`` script per figure stage, a collect job, a submit script.

Each array task runs one point: the same command ``figures.py`` runs locally
(with ``--automatic_resume``), started with ``srun`` so that Slurm's SIGTERM
before the time limit reaches it (the run saves a checkpoint and exits 0 without
results.json). The task then asks ``figures.py --check INDEX`` whether the point
finished; if not, it requeues itself (``scontrol requeue``), so the stage's job
stays unfinished and the next stage (``--dependency=afterok``) waits. A point
already finished exits at once, so rerunning ``submit.sh`` is safe.
"""
import os
import shlex
import shutil
import stat
import subprocess

from utils.errors import UserError

DEFAULTS = {"time": "24:00:00", "gpus": 1, "cpus_per_task": 8, "mem": "32G", "partition": None, "account": None,
            "collect_time": "00:30:00"}


def _header(name, options, log_dir, array=None, gpus=True):
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}"]
    if array is not None:
        lines.append(f"#SBATCH --array=0-{array - 1}")
    lines += [f"#SBATCH --time={options['time'] if gpus else options['collect_time']}",
              f"#SBATCH --cpus-per-task={options['cpus_per_task'] if gpus else 2}",
              f"#SBATCH --mem={options['mem']}",
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
    lines = _header(name, options, log_dir, array=len(points))
    lines += ["", "set -euo pipefail", f"cd {shlex.quote(options['root'])}", 'PYTHON="${PYTHON:-python}"',
              f"WORKERS=\"${{WORKERS:-${{SLURM_CPUS_PER_TASK:-{options['cpus_per_task']}}}}}\"", ""]
    if prepare:
        lines.append(f'"$PYTHON" {shlex.join(fig_args)} --prepare {stage}')
    lines.append('case "$SLURM_ARRAY_TASK_ID" in')
    for i, p in enumerate(points):
        lines.append(f"  {i}) cmd=({shlex.join([p.script, *p.argv])}) ;;  # {p.id}")
    lines += ['  *) echo "no point $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac",
              'srun --ntasks=1 "$PYTHON" "${cmd[@]}" --workers "$WORKERS"',
              f'if ! "$PYTHON" {shlex.join(fig_args)} --check "$SLURM_ARRAY_TASK_ID" --stage {stage}; then',
              '  echo "point $SLURM_ARRAY_TASK_ID not finished: requeued" >&2',
              '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" || exit 3',
              "fi", ""]
    return "\n".join(lines)


def collect_script(name, options, log_dir, fig_args):
    lines = _header(name, options, log_dir, gpus=False)
    lines += ["", "set -euo pipefail", f"cd {shlex.quote(options['root'])}", 'PYTHON="${PYTHON:-python}"',
              f'"$PYTHON" {shlex.join(fig_args)} --collect-only', ""]
    return "\n".join(lines)


def submit_script(files):
    """Submit in order: each stage waits for the previous one to succeed (afterok); the last
    file, the collect job, runs once the last stage ends either way (afterany) and draws what finished."""
    lines = ["#!/bin/bash", "# Submits the figure's stages in order: each stage after the previous one succeeded",
             "# (afterok); the collect job after the last stage ended (afterany). Rerunning is safe.",
             "set -euo pipefail", 'cd "$(dirname "$0")"', "dep=()"]
    for i, f in enumerate(files):
        lines += [f'j{i}=$(sbatch --parsable ${{dep[@]+"${{dep[@]}}"}} {shlex.quote(os.path.basename(f))})',
                  f'j{i}="${{j{i}%%;*}}"', f'echo "{os.path.basename(f)}: job $j{i}"']
        if i + 1 < len(files):
            lines.append(f'dep=(--dependency={"afterany" if i + 2 == len(files) else "afterok"}:"$j{i}")')
    return "\n".join(lines) + "\n"


def _write(path, text):
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def write_scripts(figure, profile, out, stages, spec, needs_prepare):
    """``<out>/<figure>/slurm/NN-<stage>.sbatch``, ``NN-collect.sbatch`` and ``submit.sh``; returns the paths."""
    options = dict(DEFAULTS, **(spec.get("slurm") or {}), root=os.path.abspath("."))
    folder = os.path.join(out, figure, "slurm")
    log_dir = os.path.join(folder, "logs")
    os.makedirs(log_dir, exist_ok=True)
    fig_args = figure_args(figure, profile, out)
    files = []
    for i, (stage, points) in enumerate(stages):
        text = stage_script(f"rst-{figure}-{stage}", stage, points, options, log_dir, fig_args, stage in needs_prepare)
        files.append(_write(os.path.join(folder, f"{i:02d}-{stage}.sbatch"), text))
    files.append(_write(os.path.join(folder, f"{len(stages):02d}-collect.sbatch"),
                        collect_script(f"rst-{figure}-collect", options, log_dir, fig_args)))
    submit = _write(os.path.join(folder, "submit.sh"), submit_script(files))
    return files, submit


def submit(path):
    """Run submit.sh (needs sbatch on PATH)."""
    if shutil.which("sbatch") is None:
        raise UserError("--submit needs SLURM's sbatch on PATH (not found); the scripts are written: "
                        f"run {path} on the cluster's login node")
    return subprocess.run(["bash", path], check=False).returncode
