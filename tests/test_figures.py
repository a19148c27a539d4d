"""experiments/figures.py: the smoke profile of every figure end to end (CSV rows, resume,
settings conflicts) and the cifar10 profile's SLURM scripts (bash syntax, commands that
parse with our CLI, stage dependencies)."""
import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT
from utils.config import parse_config
from utils.errors import UserError

FIGURES = os.path.join(ROOT, "experiments", "figures.py")
# rows of each smoke figure: (id, variant) pairs
SMOKE_ROWS = {
    "existence": {("search/cresnet18/k=0.1", "RST"), ("search/cresnet18/k=0.5", "RST"),
                  ("dense/cresnet18", "dense AT"), ("search/wrn-34-10/k=0.1", "RST"),
                  ("search/wrn-34-10/k=0.5", "RST"), ("dense/wrn-34-10", "dense AT")},
    "property": {(f"{kind}/k={k}", variant) for k in ("0.1", "0.5") for kind, variant in
                 (("search", "RST"), ("ft_inherit", "ft_inherit"), ("ft_reinit", "ft_reinit"),
                  ("rtt-natural", "RTT (natural)"), ("rtt-adversarial", "RTT (adversarial)"))}
    | {("dense/natural", "dense (natural)"), ("dense/adversarial", "dense (adversarial)")},
    "application": {("search/k=0.1", "RST"), ("search/k=0.3", "RST"), ("search/k=0.5", "RST"),
                    ("dense", "dense AT"), ("matrix", "matrix"), ("r2s", "r2s")},
}
# AutoAttack rows (seed 0 only: the spec's autoattack.seeds)
SMOKE_AA = {"existence": {(f"autoattack/{arch}/{kind}/k={k}", variant) for arch in ("cresnet18", "wrn-34-10")
                          for kind, variant, k in (("rst", "RST", "0.5"), ("dense-at", "dense AT", "1"))}}


def figures(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, FIGURES, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


SEEDS = {"existence": 2, "property": 1, "application": 1}  # --seeds of each smoke figure here


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """All three smoke figures, run once for the module (existence with two seeds; the other
    figures reuse its cResNet18 searches: the runs of one --out are shared)."""
    out = tmp_path_factory.mktemp("figures")
    for figure in SMOKE_ROWS:
        proc = figures(figure, "--profile", "smoke", "--out", out, "--jobs", "2", "--seeds", SEEDS[figure])
        assert proc.returncode == 0, proc.stderr[-3000:]
        if figure != "existence":
            assert ": skipped (finished" in proc.stderr  # shared with the existence figure
    return out


@pytest.mark.parametrize("figure", sorted(SMOKE_ROWS))
def test_smoke_figure_rows(smoke, figure):
    folder = smoke / figure
    all_rows = read_rows(folder / f"{figure}.csv")
    rows = [r for r in all_rows if r["row"] == "seed"]
    summary = [r for r in all_rows if r["row"] == "summary"]
    aa = SMOKE_AA.get(figure, set())
    assert {(r["id"], r["variant"]) for r in summary} == SMOKE_ROWS[figure] | aa
    assert len(summary) == len(SMOKE_ROWS[figure] | aa)
    assert sorted((r["id"], r["seed"]) for r in rows) == sorted(
        [(pid, str(s)) for pid, _ in SMOKE_ROWS[figure] for s in range(SEEDS[figure])] + [(pid, "0") for pid, _ in aa])
    assert all(r["status"] == "done" for r in all_rows)
    assert all(r["n_seeds"] == str(1 if (r["id"], r["variant"]) in aa else SEEDS[figure]) and r["seed"] == ""
               for r in summary)
    assert all(0 <= float(r["aa_robust_acc1"]) <= 100 and r["aa_steps"] == "2" for r in rows if r.get("panel") == "autoattack")
    claims = json.loads((folder / "claims.json").read_text())["claims"]
    text = (folder / "claims.md").read_text()
    verdicts = ("holds", "does not hold", "inconclusive", "PGD-20 numbers kept", "AutoAttack numbers used for C1a")
    assert claims and all(c["verdict"] in verdicts and c["verdict_converged_only"] in verdicts for c in claims)
    assert ("A0" in {c["id"] for c in claims}) == bool(aa)
    assert all(f"**{c['verdict']}**" in text and c["id"] in text for c in claims)
    assert "Convergence: no run has a convergence flag" in text  # 1 epoch: never judged
    for r in rows:
        if r["task"] in ("search", "ft_inherit", "ft_reinit", "train_full"):
            assert 0 <= float(r["natural_acc1"]) <= 100 and r["epochs_done"] == "1"
            assert os.path.isfile(os.path.join(r["run_dir"], "results.json"))
            assert r["command"].startswith(("python main.py", "python train_full.py"))
            assert f"--seed {r['seed']} " in r["command"] and f"seed={r['seed']}" in r["run_dir"]
    assert (folder / f"{figure}.png").stat().st_size > 10_000
    assert "| k |" in (folder / f"{figure}.md").read_text() or figure == "application"


def test_smoke_summary_rows_are_seed_statistics(smoke):
    all_rows = read_rows(smoke / "existence" / "existence.csv")
    for pid in ("search/cresnet18/k=0.1", "dense/wrn-34-10"):
        seeds = [float(r["best_robust_acc1"]) for r in all_rows if r["id"] == pid and r["row"] == "seed"]
        summary = next(r for r in all_rows if r["id"] == pid and r["row"] == "summary")
        mean = sum(seeds) / 2
        assert float(summary["best_robust_acc1"]) == pytest.approx(mean, abs=1e-4)
        sd = (sum((x - mean) ** 2 for x in seeds)) ** 0.5  # n - 1 = 1
        assert float(summary["best_robust_acc1_sd"] or 0) == pytest.approx(sd, abs=1e-3)
        assert float(summary["best_robust_acc1_ci95"] or 0) == pytest.approx(12.706 * sd / 2 ** 0.5, abs=1e-2)


def test_smoke_application_outputs(smoke):
    rows = {r["id"]: r for r in read_rows(smoke / "application" / "application.csv") if r["row"] == "seed"}
    assert rows["matrix"]["tickets"] == "3" and rows["matrix"]["matrix"] == "strong"  # the headline protocol
    assert 0 <= float(rows["matrix"]["offdiag_mean_paper"]) <= 100  # the paper's, beside it
    assert 0 <= float(rows["r2s"]["r2s_natural"]) <= 100
    assert float(rows["r2s"]["r2s_worst_case"]) <= float(rows["r2s"]["r2s_transfer_paper"]) + 1e-6
    tickets = sorted(os.listdir(smoke / "application" / "tickets" / "seed=0"))
    assert tickets == ["cResNet18_0.1.pth", "cResNet18_0.3.pth", "cResNet18_0.5.pth"]
    with open(smoke / "application" / "application_matrix.csv") as fh:
        lines = fh.read().splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("source k")]
    assert headers == [0, 5] and "(strong transfer)" in lines[0] and "(paper transfer)" in lines[5]
    assert len(lines) == 10  # per protocol: header, natural row, one row per source ticket


def test_rerun_skips_finished_and_resumes_interrupted(smoke):
    rows = read_rows(smoke / "existence" / "existence.csv")
    dirs = {(r["id"], r["seed"]): r["run_dir"] for r in rows}
    result = {(r["id"], r["seed"]): "transfer_matrix.json" if r["task"] == "transfer" else "results.json" for r in rows}
    run_dir = dirs["dense/cresnet18", "1"]
    os.remove(os.path.join(run_dir, "results.json"))  # as if killed after its last checkpoint
    kept = [os.path.join(d, result[key]) for key, d in dirs.items() if key[1] and key != ("dense/cresnet18", "1")]
    before = [os.path.getmtime(k) for k in kept]
    proc = figures("existence", "--profile", "smoke", "--out", smoke, "--seeds", 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count(": skipped (finished") == 15  # every other point of both seeds, AutoAttack's 4 too
    assert "dense/cresnet18/seed=1: running (resuming)" in proc.stderr
    assert os.path.isfile(os.path.join(run_dir, "results.json")) and [os.path.getmtime(k) for k in kept] == before
    assert "resumed from" in open(os.path.join(smoke, "existence", "logs", "dense_cresnet18_seed=1.log")).read()


def test_settings_conflict_is_one_line_error(smoke, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(smoke / "property", out / "property", symlinks=True)
    shutil.copytree(smoke / "runs", out / "runs", symlinks=True)
    settings = next(r["run_dir"] for r in read_rows(out / "property" / "property.csv")
                    if r["id"] == "search/k=0.1" and r["row"] == "seed")
    settings = os.path.join(settings.replace(str(smoke), str(out)), "settings.txt")
    with open(settings) as fh:
        text = fh.read()
    with open(settings, "w") as fh:
        fh.write(re.sub(r"^epochs: 1$", "epochs: 7", text, flags=re.M))
    proc = figures("property", "--profile", "smoke", "--out", out)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "epochs: 7 (run) vs 1" in proc.stderr


def arms(path):
    """(index, argv) of every ``N) cmd=(...)`` arm of an array script."""
    with open(path) as fh:
        return [(int(m.group(1)), shlex.split(m.group(2)))
                for m in re.finditer(r"^  (\d+)\) cmd=\((.*)\) ;;", fh.read(), flags=re.M)]


def test_slurm_dry_run_cifar10(tmp_path, monkeypatch):
    from models.conv_type import CONV_TYPES
    import models  # noqa: F401  (registers the architectures)
    from models.registry import MODELS as ARCHS
    from utils.run_dir import run_dir_for
    monkeypatch.chdir(ROOT)  # commands are relative to the repository root
    outputs = {}
    for figure, extra in (("existence", ["--ablation", "all"]), ("property", []), ("application", [])):
        proc = figures(figure, "--profile", "cifar10", "--out", tmp_path, "--slurm", *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        folder = tmp_path / figure / "slurm"
        files = sorted(folder.glob("*.sbatch")) + [folder / "submit.sh"]
        for f in files:
            assert subprocess.run(["bash", "-n", str(f)]).returncode == 0, f
        produced = set()  # run directories of earlier stages
        for f in files[:-2]:
            commands = arms(f)
            text = f.read_text()
            assert f"#SBATCH --array=0-{len(commands) - 1}" in text and [i for i, _ in commands] == list(
                range(len(commands)))
            for _, argv in commands:
                cfg = parse_config(argv[1:], prog=argv[0])
                assert cfg.set == "CIFAR10" and cfg.epochs == 160 and cfg.lr_policy == "cifar_piecewise"
                assert cfg.attack_iters == 7 and cfg.eval_attack == "pgd" and cfg.arch in ARCHS
                assert (cfg.conv_type or "SubnetConv") in CONV_TYPES
                if argv[0] != "test_trans.py":
                    assert "--automatic_resume" in argv
                if cfg.pretrained and argv[0] == "main.py":  # fine-tuning / RTT: an earlier stage's output
                    assert os.path.dirname(os.path.dirname(cfg.pretrained)) in produced
            for _, argv in commands:
                cfg = parse_config(argv[1:], prog=argv[0])
                if argv[0] == "train_full.py":
                    cfg.prune_rate = 1.0
                produced.add(run_dir_for(cfg, "train_full" if argv[0] == "train_full.py" else cfg.task))
        outputs[figure] = [f.name for f in files]
        submit = (folder / "submit.sh").read_text()
        sbatch = re.findall(r"sbatch --parsable .* (\S+\.sbatch)\)", submit)
        assert sbatch == [f.name for f in files[:-1]]
        deps = re.findall(r'dep=\(--dependency=(\w+):(\S+?)( --kill-on-invalid-dep=yes)?\)', submit)
        last = len(sbatch) - 2  # the collect job runs after every stage, whatever their outcome
        assert deps == [("afterok", f'"$j{i}"', " --kill-on-invalid-dep=yes") for i in range(last)] + [
            ("afterany", ":".join(f'"$j{i}"' for i in range(last + 1)), "")]
    assert outputs["existence"] == ["00-train.sbatch", "01-collect.sbatch", "submit.sh"]
    assert outputs["property"] == ["00-train.sbatch", "01-finetune.sbatch", "02-collect.sbatch", "submit.sh"]
    assert outputs["application"] == ["00-train.sbatch", "01-transfer.sbatch", "02-collect.sbatch", "submit.sh"]
    assert "--prepare transfer" in (tmp_path / "application" / "slurm" / "01-transfer.sbatch").read_text()
    assert len(arms(tmp_path / "application" / "slurm" / "01-transfer.sbatch")) == 2


def test_slurm_dry_run_writes_nothing_setup_memory_and_failures(tmp_path):
    """--slurm --dry-run prints the scripts and writes nothing; --slurm-setup tops every job; memory per
    stage from the spec (collect 4G); a failed point is not requeued; the collect job checks every point."""
    from experiments import slurm
    from experiments.points import figure_points
    from experiments.spec import load_spec
    out = tmp_path / "out"
    proc = figures("property", "--profile", "cifar10", "--out", out, "--slurm", "--dry-run",
                   "--slurm-setup", "module load cuda", "--slurm-setup", "source /venv/bin/activate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not out.exists(), "a dry run writes nothing"
    shown = re.split(r"^# --- would write (\S+) ---$", proc.stdout, flags=re.M)[1:]
    scripts = dict(zip(shown[::2], shown[1::2]))
    assert [os.path.basename(p) for p in scripts] == ["00-train.sbatch", "01-finetune.sbatch", "02-collect.sbatch",
                                                     "submit.sh"]
    for path, text in scripts.items():
        if path.endswith(".sbatch"):
            body = text.split("\n\n", 1)[1]
            assert body.startswith("{\n  module load cuda\n}") and "source /venv/bin/activate" in body
    collect = next(t for p, t in scripts.items() if p.endswith("collect.sbatch"))
    assert "#SBATCH --mem=4G" in collect and "--check-all" in collect
    train = next(t for p, t in scripts.items() if p.endswith("00-train.sbatch"))
    assert "#SBATCH --mem=32G" in train and "not requeued" in train
    spec = dict(load_spec("property", "cifar10"))
    spec["slurm"] = dict(spec["slurm"], mem={"train": "24G", "default": "8G"}, setup="conda activate rst")
    points = figure_points("property", spec, str(tmp_path / "fig"), [])
    stages = [(s, [p for p in points if p.stage == s]) for s in ("train", "finetune")]
    written, _ = slurm.write_scripts("property", "cifar10", str(tmp_path / "w"), stages, spec, set())
    mems = [re.search(r"--mem=(\S+)", text).group(1) for _, text in written[:3]]
    assert mems == ["24G", "8G", "4G"] and all("conda activate rst" in t for _, t in written[:3])
    for path, _ in written:
        assert subprocess.run(["bash", "-n", path]).returncode == 0, path
    spec["slurm"] = {"memory": "8G"}
    with pytest.raises(UserError, match="unknown key 'memory' in the spec's slurm: entry; did you mean 'mem'"):
        slurm.write_scripts("property", "cifar10", str(tmp_path / "w"), stages, spec, set(), dry_run=True)
    run_stage_with_fake_slurm(tmp_path, written[0][0])


def run_stage_with_fake_slurm(tmp_path, script):
    """An array task whose run fails exits with its status and is not requeued; one that exits 0
    unfinished (Slurm's SIGTERM before the time limit) requeues itself."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fakes = {"srun": 'shift; exec "$@"', "scontrol": 'echo "$@" >> "$MARKER"', "conda": "exit 0",
             "fakepython": 'for a in "$@"; do [ "$a" = --check ] && exit 1; done; exit "$RUN_EXIT"'}
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    for run_exit, code, requeued in (("3", 3, False), ("0", 0, True)):
        marker = tmp_path / f"requeued-{run_exit}"
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON="fakepython", RUN_EXIT=run_exit,
                   MARKER=str(marker), SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_JOB_ID="7")
        proc = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
        assert proc.returncode == code, proc.stderr
        assert marker.exists() == requeued, proc.stderr


def test_submit_without_sbatch_and_bad_arguments(tmp_path):
    if shutil.which("sbatch"):
        pytest.skip("sbatch exists here")
    proc = figures("property", "--profile", "cifar10", "--out", tmp_path, "--submit")
    assert proc.returncode == 2 and "sbatch" in proc.stderr
    proc = figures("property", "--profile", "cifar10", "--ablation", "init", "--dry-run")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --ablation applies to the existence figure")
    proc = figures("existence", "--profile", "laptop")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_dry_run_lists_every_point():
    proc = figures("property", "--profile", "digits", "--dry-run", "--out", "/nonexistent/figures")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 110 and all(" new " in line for line in lines)  # 22 points x 5 seeds
    assert sum(line.startswith("finetune") for line in lines) == 80
    assert sum("--seed 2 " in line and "seed=2" in line for line in lines) == 22
    assert all("--automatic_resume" in line for line in lines)
    assert all(" OMP_NUM_THREADS=1 python " in line for line in lines)  # the digits spec's threads: 1


def test_spec_threads_fix_commands_runs_and_slurm(tmp_path, monkeypatch):
    """A spec's ``threads`` prefixes every point's command, sets the runs' threads whatever --jobs
    says, is exported in the SLURM stage scripts, and must be a whole number >= 1."""
    from experiments import runner, slurm, spec as spec_mod
    from experiments.points import figure_points
    spec = dict(spec_mod.load_spec("application", "smoke"), threads=3)
    points = figure_points("application", spec, str(tmp_path / "fig"), [])
    assert all(p.command().startswith("OMP_NUM_THREADS=3 python ") for p in points)
    seen = []
    monkeypatch.setattr(runner, "run_stage", lambda todo, logs, progress, spawn, jobs, threads: seen.append(threads))
    monkeypatch.setattr(runner, "preload", lambda: None)
    runner.run_points(points, str(tmp_path / "fig"), jobs=2)
    assert seen and set(seen) == {3}
    stages = [(s, [p for p in points if p.stage == s]) for s in ("train",)]
    written, _ = slurm.write_scripts("application", "smoke", str(tmp_path / "w"), stages, spec, set())
    assert "export OMP_NUM_THREADS=3" in written[0][1]
    bad = tmp_path / "configs"
    bad.mkdir()
    (bad / "existence-smoke.yaml").write_text("figure: existence\nthreads: 0\n")
    monkeypatch.setattr(spec_mod, "ROOT", str(tmp_path))
    monkeypatch.setattr(spec_mod, "CONFIG_DIR", "configs")
    with pytest.raises(UserError, match="'threads' must be a whole number >= 1, not 0"):
        spec_mod.load_spec("existence", "smoke")


def test_collect_only_publishes(smoke, tmp_path):
    proc = figures("property", "--profile", "smoke", "--out", smoke, "--collect-only", "--publish", tmp_path / "docs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "docs")) == ["property.csv", "property.md", "property.png",
                                                      "property_claims.json", "property_claims.md"]
    assert ": running" not in proc.stderr  # nothing ran
