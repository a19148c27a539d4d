"""The paper's three figures, one command each (see docs/figures.md).

    python experiments/figures.py {existence,property,application,calibration} --profile {smoke,digits,digits-eps8,cifar10}
                                  [--out DIR] [--seeds N] [--dry-run] [--slurm [--submit] [--slurm-setup CMD]]
                                  [--ablation NAME] [--collect-only] [--publish DIR]

Runs every point of the figure that is not finished yet (ordinary runs of main.py,
train_full.py and test_trans.py, resumable), each with seeds 0..N-1, then writes
DIR/<figure>/<figure>.csv, .md, .png and claims.md/.json. DIR defaults to
runs/figures/<profile>; the runs of its figures are shared under DIR/runs/. Commands run from the
repository root; relative paths in them are relative to it.
"""
import argparse
import logging
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# run as a script: import the project's packages, not this folder's modules by bare name
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or ".") not in (HERE, ROOT)]

from experiments import report, runner, slurm  # noqa: E402
from experiments.points import ABLATIONS, STAGES, figure_points, link_autoattack, link_tickets  # noqa: E402
from experiments.spec import FIGURES, PROFILES, load_spec, spec_seeds, unique_points  # noqa: E402
from utils.errors import UserError, cli_main  # noqa: E402
from utils.run_dir import setup_logging  # noqa: E402

log = logging.getLogger("rst.figures")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"figures.py: {message} (see --help)")


def build_parser():
    p = _Parser(prog="figures.py", description="Run, collect and draw one of the paper's figures.")
    p.add_argument("figure", choices=FIGURES)
    p.add_argument("--profile", required=True, choices=PROFILES,
                   help="smoke (seconds, for tests), digits (2 CPU cores, the radius calibrated to the digits), "
                        "digits-eps8 (the same at the paper's 8/255: half a grey level), cifar10 (the paper's "
                        "settings, GPU)")
    p.add_argument("--out", default=None, help="output folder (default runs/figures/<profile>); the figure "
                                               "goes to OUT/<figure>/, its runs to OUT/<figure>/runs/")
    p.add_argument("--ablation", action="append", default=[], choices=ABLATIONS + ("all",),
                   help="existence: add an ablation panel (repeatable; 'all' for every one)")
    p.add_argument("--data", default=None, help="dataset root passed to every point (--data)")
    p.add_argument("--seeds", type=int, default=None,
                   help="repeat every point with seeds 0..N-1 (default: the spec's 'seeds', 3 for digits, else 1)")
    p.add_argument("--dry-run", action="store_true", help="list every point, its state and command; run nothing")
    p.add_argument("--slurm", action="store_true", help="write sbatch --array scripts per stage (run nothing here)")
    p.add_argument("--submit", action="store_true", help="with --slurm: submit them (needs sbatch)")
    p.add_argument("--slurm-setup", "--slurm_setup", dest="slurm_setup", action="append", default=[], metavar="CMD",
                   help="with --slurm: a command run at the top of every job (module load, conda or venv "
                        "activation; repeatable); replaces the spec's slurm: {setup: ...}")
    p.add_argument("--jobs", type=int, default=1, help="points of a stage run at once (each with cores/jobs threads)")
    p.add_argument("--spawn", action="store_true", help="start a fresh interpreter per point instead of forking")
    p.add_argument("--collect-only", action="store_true", help="only collect finished points and draw")
    p.add_argument("--publish", default=None, metavar="DIR",
                   help="also copy the figure's CSV, MD, PNG and claims to DIR as <figure>.*, <figure>_claims.*")
    p.add_argument("--prepare", default=None, help=argparse.SUPPRESS)  # SLURM: set up a stage (ticket links)
    p.add_argument("--check", type=int, default=None, help=argparse.SUPPRESS)  # SLURM: exit 0 iff point done
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    p.add_argument("--check-all", action="store_true", help=argparse.SUPPRESS)  # SLURM collect: exit 1 if any unfinished
    return p


def out_dir(args, cwd):
    """Absolute output folder, shown relative to the repository root when inside it."""
    out = os.path.abspath(os.path.join(cwd, args.out or os.path.join("runs", "figures", args.profile)))
    rel = os.path.relpath(out, ROOT)
    return out if rel.startswith("..") else rel


def build(args, cwd):
    spec = load_spec(args.figure, args.profile)
    if args.data:
        spec["flags"] = dict(spec.get("flags") or {}, data=args.data)
    ablations = list(ABLATIONS) if "all" in args.ablation else list(dict.fromkeys(args.ablation))
    out = out_dir(args, cwd)
    fig_dir = os.path.join(out, args.figure)
    spec["seed_list"] = spec_seeds(spec, args.seeds)
    all_points = figure_points(args.figure, spec, fig_dir, ablations, spec["seed_list"])
    return spec, out, fig_dir, all_points, unique_points(all_points)


def stages_of(figure, points):
    return [(s, [p for p in points if p.stage == s]) for s in STAGES[figure] if any(p.stage == s for p in points)]


def dry_run(spec, points):
    log.info("%s: %d points (%s); budget: %s", spec["path"], len(points),
             ", ".join(f"{s}: {sum(p.stage == s for p in points)}" for s in dict.fromkeys(p.stage for p in points)),
             spec.get("budget", "not stated"))
    for p in points:
        sys.stdout.write(f"{p.stage:<9} {runner.point_status(p):<7} {p.id:<28} {p.command()}\n")


def write_slurm(args, spec, out, points):
    stages = stages_of(args.figure, points)
    scripts, submit = slurm.write_scripts(args.figure, args.profile, out, stages, spec,
                                          needs_prepare={PREPARED[args.figure]} if args.figure in PREPARED else set(),
                                          setup=args.slurm_setup, dry_run=args.dry_run)
    for path, text in scripts:
        if args.dry_run:  # print what would be written; write nothing
            sys.stdout.write(f"# --- would write {path} ---\n{text}")
        else:
            log.info("wrote %s", path)
    if not args.dry_run:
        log.info("submit with: bash %s", submit)
    if args.submit and not args.dry_run:
        return slurm.submit(submit)
    return 0


PREPARED = {"application": "transfer", "existence": "autoattack"}  # stages that read a folder of links


def prepare_stage(figure, spec, points, fig_dir, stage):
    """Before ``stage``: the folders of links to earlier stages' checkpoints that its points read."""
    if PREPARED.get(figure) != stage:
        return
    if figure == "application":
        link_tickets(spec, points, fig_dir)
    else:
        link_autoattack(spec, points)


def check(args, points):
    """SLURM: exit status 0 if point ``--check`` of ``--stage`` is finished, 1 if not."""
    stage = dict(stages_of(args.figure, points)).get(args.stage, [])
    if not 0 <= args.check < len(stage):
        raise UserError(f"--check {args.check}: stage '{args.stage}' has {len(stage)} points")
    return 0 if runner.point_status(stage[args.check]) == "done" else 1


def check_all(points):
    """SLURM collect job: exit status 1 (listing them) if any point is not finished."""
    left = [(p, runner.point_status(p)) for p in points]
    left = [(p, status) for p, status in left if status != "done"]
    for p, status in left:
        log.error("not finished: %s %s (%s): see its run's log.txt and the stage's Slurm log", p.stage, p.id, status)
    return 1 if left else 0


def collect(args, spec, fig_dir, all_points):
    out = report.REPORTS[args.figure](spec, all_points, fig_dir)
    for kind in ("csv", "md", "png", "claims", "json"):
        if kind in out:
            log.info("wrote %s", out[kind])
    log.info("%s", out["convergence"])
    if args.publish:
        publish(args.figure, fig_dir, args.publish)
    return out


def publish(figure, fig_dir, dest):
    """Copy the figure's outputs to ``dest`` (docs/figures/ in this repository)."""
    os.makedirs(dest, exist_ok=True)
    names = {f"{figure}.{ext}": f"{figure}.{ext}" for ext in ("csv", "md", "png", "json")}
    names.update({"claims.md": f"{figure}_claims.md", "claims.json": f"{figure}_claims.json",
                  "application_matrix.csv": "application_matrix.csv"})
    for src, name in names.items():
        if os.path.isfile(os.path.join(fig_dir, src)):
            shutil.copyfile(os.path.join(fig_dir, src), os.path.join(dest, name))
            log.info("published %s", os.path.join(dest, name))


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.submit:
        args.slurm = True
    if args.slurm_setup and not args.slurm:
        raise UserError("--slurm-setup applies to --slurm job scripts; add --slurm")
    setup_logging()
    cwd = os.getcwd()
    if args.publish:
        args.publish = os.path.abspath(os.path.join(cwd, args.publish))
    os.chdir(ROOT)  # presets and commands are relative to the repository root
    spec, out, fig_dir, all_points, points = build(args, cwd)
    if args.check is not None:
        return check(args, points)
    if args.check_all:
        return check_all(points)
    if args.prepare:
        prepare_stage(args.figure, spec, points, fig_dir, args.prepare)
        return 0
    if args.slurm:
        return write_slurm(args, spec, out, points)
    if args.dry_run:
        return dry_run(spec, points)
    if not args.collect_only:
        log.info("%s: %d points; budget: %s", spec["path"], len(points), spec.get("budget", "not stated"))
        start = time.time()
        runner.run_points(points, fig_dir, lambda stage: prepare_stage(args.figure, spec, points, fig_dir, stage),
                          args.spawn, args.jobs)
        log.info("%s: all %d points finished in %s", args.figure, len(points),
                 runner._duration(time.time() - start))
    collect(args, spec, fig_dir, all_points)
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(main) or 0)
