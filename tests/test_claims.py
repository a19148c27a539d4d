"""Seed statistics, the convergence rule and the claims' verdict rules (experiments/)."""
import pytest

from experiments import claims
from experiments.convergence import converged
from experiments.stats import describe, paired

RULE = {"rule": "last_third", "tolerance": 1.0}


def test_describe_is_student_t_interval():
    d = describe([1.0, 2.0, 3.0, None])
    assert d["n"] == 3 and d["mean"] == 2.0 and d["sd"] == pytest.approx(1.0)
    assert d["ci95"] == pytest.approx(4.303 / 3 ** 0.5) and d["low"] < 2.0 < d["high"]
    assert describe([5.0])["ci95"] is None and describe([])["mean"] is None


def test_paired_matches_seeds():
    d = paired({0: 10.0, 1: 12.0, 2: 50.0}, {0: 8.0, 1: 9.0, 3: 0.0})  # seeds 2 and 3 unpaired
    assert d["n"] == 2 and d["mean"] == pytest.approx(2.5)


@pytest.mark.parametrize("late, expected", [(70.5, True), (71.0, True), (71.5, False)])
def test_convergence_last_third(late, expected):
    history = [{"epoch": e, "robust_acc1": v} for e, v in ((0, 40.0), (6, 65.0), (12, 70.0), (14, late), (19, 69.0))]
    assert converged(history, 20, RULE) is expected


def test_convergence_unknown_without_late_validations_or_rule():
    assert converged([{"epoch": 0, "robust_acc1": 50.0}], 1, RULE) is None
    assert converged([{"epoch": 0, "robust_acc1": 50.0}, {"epoch": 19, "robust_acc1": 60.0}], 20, None) is None
    assert converged([{"epoch": 0, "natural_acc1": 50.0}, {"epoch": 19, "natural_acc1": 60.0}], 20, RULE) is False


def rows(diffs_by_k, dense=50.0):
    """Per-seed existence rows: RST = dense + diff at each k, three seeds."""
    out = [{"row": "seed", "model": "m", "arch": "cResNet18", "panel": "main", "variant": "dense AT", "k": 1.0,
            "seed": s, "best_robust_acc1": dense} for s in range(3)]
    for k, diffs in diffs_by_k.items():
        out += [{"row": "seed", "model": "m", "arch": "cResNet18", "panel": "main", "variant": "RST", "k": k,
                 "seed": s, "best_robust_acc1": dense + d} for s, d in enumerate(diffs)]
    return out


def test_existence_match_claim_verdicts():
    close = {0.1: [-1, 0, 1], 0.3: [0, 1, 2], 0.5: [-2, -1, 0]}
    far = {0.1: [-20, -21, -19], 0.3: [-30, -29, -31], 0.5: [-25, -24, -26]}
    noisy = {0.1: [-30, 10, -5], 0.3: [-1, 0, 1], 0.5: [0, 1, 2]}
    verdict = {k: {c["id"]: c["verdict"] for c in claims.existence_claims(rows(v))} for k, v in
               (("close", close), ("far", far), ("noisy", noisy))}
    assert verdict["close"]["C1a m"] == claims.HOLDS
    assert verdict["far"]["C1a m"] == claims.FAILS
    assert verdict["noisy"]["C1a m"] == claims.OPEN


def test_shape_claim_needs_rise_and_fall():
    peaked = {0.01: [-10, -11, -9], 0.1: [0, 1, 0], 0.9: [-8, -7, -9]}
    flat_end = {0.01: [-10, -11, -9], 0.1: [0, 1, 0], 0.9: [1, 2, 1]}
    assert {c["id"]: c["verdict"] for c in claims.existence_claims(rows(peaked))}["C1b m"] == claims.HOLDS
    assert {c["id"]: c["verdict"] for c in claims.existence_claims(rows(flat_end))}["C1b m"] == claims.FAILS


def test_write_claims(tmp_path):
    path = claims.write_claims("existence", rows({0.1: [0, 1, 0]}), str(tmp_path), "header")
    text = open(path).read()
    assert "| **C1a m**" in text and "**holds**" in text and (tmp_path / "claims.json").exists()


def test_convergence_tolerance_grows_with_sampling_noise():
    history = [{"epoch": 0, "robust_acc1": 60.0}, {"epoch": 12, "robust_acc1": 89.9}, {"epoch": 16, "robust_acc1": 92.3}]
    assert converged(history, 20, RULE) is False  # +2.4 points > 1 point
    noisy = dict(RULE, sigmas=2, examples=287)  # 2 SE at 92.3% on 287 images = 3.1 points
    assert converged(history, 20, noisy) is True
    assert converged(history, 20, dict(noisy, examples=100000)) is False  # a huge split: 1 point again


def test_convergence_share_counts_each_run_once():
    from experiments.convergence import describe_share, share
    seed = {"row": "seed"}
    rows = [dict(seed, id="a", run_dir="r/a", converged=True), dict(seed, id="a", run_dir="r/a", converged=True),
            dict(seed, id="b", run_dir="r/b", converged="False"), dict(seed, id="c", run_dir="r/c", converged=""),
            {"row": "summary", "id": "a", "converged": "2/3"}]
    s = share(rows)
    assert (s["runs"], s["converged"], s["unconverged"]) == (2, 1, ["b"])
    assert "1 of 2 runs (50%)" in describe_share(s) and "NOT met" in describe_share(s)
    assert "target 90%: met" in describe_share(share(rows[:2]))


def test_convergence_cli_reads_csvs(tmp_path, capsys):
    from experiments.convergence import main
    path = tmp_path / "f.csv"
    path.write_text("row,id,run_dir,converged\nseed,a,r/a,True\nseed,b,r/b,False\nsummary,a,,1/2\n")
    main([str(path), str(path)])  # the same runs twice: counted once
    assert "1 of 2 runs (50%)" in capsys.readouterr().out


def test_claims_state_convergence(tmp_path):
    rows_ = [dict(r, run_dir=f"r{i}", converged=i % 2 == 0) for i, r in enumerate(rows({0.1: [0, 1, 0]}))]
    text = open(claims.write_claims("existence", rows_, str(tmp_path), "header")).read()
    assert "Convergence: 3 of 6 runs (50%) meet the rule (target 90%: NOT met)" in text
