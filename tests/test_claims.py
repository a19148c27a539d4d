"""Seed statistics, the convergence rule and the claims' verdict rules (experiments/)."""
import json

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


def rows(diffs_by_k, dense=50.0, drop=30.0, selection=None):
    """Per-seed existence rows: RST = dense + diff at each k, three seeds; dense AT natural = dense + ``drop``;
    the hold-out selection metric (best_acc1) equals the test robust accuracy unless ``selection`` {k: value}."""
    out = [{"row": "seed", "model": "m", "arch": "cResNet18", "panel": "main", "variant": "dense AT", "k": 1.0,
            "seed": s, "best_robust_acc1": dense, "best_natural_acc1": dense + drop} for s in range(3)]
    for k, diffs in diffs_by_k.items():
        out += [{"row": "seed", "model": "m", "arch": "cResNet18", "panel": "main", "variant": "RST", "k": k,
                 "seed": s, "best_robust_acc1": dense + d,
                 "best_acc1": (selection or {}).get(k, dense + d)} for s, d in enumerate(diffs)]
    return out


def test_existence_match_claim_verdicts():
    """Differences in points, judged as shares of a 30-point dense drop (margin 0.15 x 30 = 4.5 points)."""
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


def verdicts(figure_rows, fn=None):
    return {c["id"]: c["verdict"] for c in (fn or claims.existence_claims)(figure_rows)}


def test_match_is_relative_to_the_dense_drop():
    """The same 3-point shortfall matches in a CIFAR-like regime (0.1 of a 30-point drop, the paper's own
    share) and does not where the whole drop is 3 points (eps 8/255 on the digits)."""
    short = {0.1: [-3, -3.2, -2.8], 0.3: [-3, -3.1, -2.9], 0.5: [-3, -2.9, -3.1]}
    assert verdicts(rows(short, drop=30.0))["C1a m"] == claims.HOLDS
    assert verdicts(rows(short, drop=3.0))["C1a m"] == claims.FAILS
    c1a = claims.existence_claims(rows(short, drop=30.0))[0]
    assert c1a["threshold"] == {"quantity": "(RST − dense AT) / dense drop", "value": -0.15,
                                "paper": pytest.approx((47.0 - 50.19) / (81.73 - 50.19))}


def test_best_k_of_the_shape_claim_is_chosen_on_the_selection_split():
    """The test split favours k = 0.3, the hold-out k = 0.1: C1b's best k is the hold-out's."""
    diffs = {0.01: [-10, -11, -9], 0.1: [0, 1, 0], 0.3: [2, 3, 2], 0.9: [-8, -7, -9]}
    shape = next(c for c in claims.existence_claims(rows(diffs, selection={0.1: 99.0, 0.3: 60.0}))
                 if c["id"] == "C1b m")
    assert "best k on the selection split = 0.1" in shape["numbers"][0]


def test_unconverged_seeds_are_judged_apart():
    """One unconverged seed with a large shortfall: inconclusive with it, holds without it."""
    diffs = {0.1: [0, 0.2, -60], 0.3: [0, 0.2, -60], 0.5: [0, 0.2, -60]}
    rows_ = [dict(r, converged=not (r["variant"] == "RST" and r["seed"] == 2)) for r in rows(diffs)]
    c1a = next(c for c in claims.judged("existence", rows_) if c["id"] == "C1a m")
    assert c1a["verdict"] == claims.OPEN and c1a["verdict_converged_only"] == claims.HOLDS


def test_seeds_needed():
    from experiments.rules import seeds_needed
    d = {"mean": 1.0, "sd": 1.0}
    assert seeds_needed(d, 0.0) == 7     # t(0.975, 6) / sqrt(7) = 0.925 < 1; at n = 6: 1.05
    assert seeds_needed(dict(d, mean=0.0), 0.0).startswith("never")
    assert seeds_needed({"mean": 1.0, "sd": None}, 0.0) is None
    noisy = rows({0.1: [-30, 10, -5], 0.3: [-1, 0, 1], 0.5: [0, 1, 2]})
    c1a = claims.existence_claims(noisy)[0]
    assert c1a["verdict"] == claims.OPEN and isinstance(c1a["seeds_needed"], int) and c1a["seeds_needed"] > 3


def application_rows(off, diag, natural, r2s_n_eval=None, dense=50.0, drop=30.0):
    out = [{"row": "seed", "variant": "matrix", "seed": s, "offdiag_mean": off, "offdiag_mean_paper": off + 1,
            "diag_mean": diag, "natural_mean": natural} for s in range(3)]
    out += [{"row": "seed", "variant": "dense AT", "seed": s, "best_robust_acc1": dense + s,
             "best_natural_acc1": dense + s + drop, "n_eval": None} for s in range(3)]
    out += [{"row": "seed", "variant": "r2s", "seed": s, "r2s_transfer_paper": dense + 10 + s,
             "r2s_transfer_strong": dense + 5 + s, "r2s_worst_case": dense - 5 + s, "n_eval": r2s_n_eval}
            for s in range(3)]
    return out


def test_transfer_recovery_share_decides_c5():
    """C5: (off − diag) / (natural − diag), paper about 0.6; 'holds' needs the lower end >= 0.5."""
    good = verdicts(application_rows(70.0, 46.0, 79.0), claims.application_claims)  # 24/33 = 0.73
    poor = verdicts(application_rows(50.0, 46.0, 79.0), claims.application_claims)  # 4/33 = 0.12
    assert good["C5"] == claims.HOLDS and poor["C5"] == claims.FAILS
    c5 = claims.application_claims(application_rows(70.0, 46.0, 79.0))[0]
    assert "0.73" in c5["numbers"][0] and c5["threshold"]["paper"] == 0.6


def test_r2s_and_dense_image_counts_are_recorded():
    same = claims.application_claims(application_rows(70.0, 46.0, 79.0))
    other = claims.application_claims(application_rows(70.0, 46.0, 79.0, r2s_n_eval=200))
    c6a, c6b = same[1], same[2]
    assert c6a["equal_images"] is True and c6a["verdict"] == claims.HOLDS and c6b["verdict"] == claims.FAILS
    assert c6a["threshold"]["paper"] == pytest.approx((63.93 - 50.19) / (81.73 - 50.19), abs=1e-3)
    assert other[1]["equal_images"] is False and "NOT the same images" in other[1]["numbers"][-1]


def test_claims_regenerate_from_a_written_csv(tmp_path, capsys):
    from experiments import collect
    rows_ = rows({0.1: [-1, 0, 1], 0.3: [0, 1, 2], 0.5: [-2, -1, 0]})
    collect.write_csv(str(tmp_path / "existence.csv"), [dict(r, converged=True) for r in rows_])
    assert claims.main(["existence", str(tmp_path / "existence.csv"), "--out", str(tmp_path / "c")]) == 0
    with open(tmp_path / "c" / "claims.json") as fh:
        data = json.load(fh)
    assert [c["verdict"] for c in data["claims"]] == [c["verdict"] for c in claims.existence_claims(rows_)]
    assert data["rules"]["match_share"] == 0.15


def test_autoattack_gap_switches_c1a_to_autoattack_numbers():
    base = rows({0.1: [0, 1, 0], 0.3: [0, 1, 0], 0.5: [0, 1, 0]})
    aa = [{"row": "seed", "model": "m", "panel": "autoattack", "variant": v, "k": k, "seed": 0,
           "aa_robust_acc1": 50.0 - gap, "aa_natural_acc1": 80.0, "aa_steps": 100, "aa_version": "standard"}
          for v, k, gap in (("dense AT", 1.0, 1.0), ("RST", 0.1, 1.0))]
    small = claims.existence_all(base + aa)
    assert small[0]["id"] == "A0" and small[0]["max_gap"] == pytest.approx(1.0)
    assert small[0]["verdict"] == "PGD-20 numbers kept" and small[1]["verdict"] == claims.HOLDS
    aa[1]["aa_robust_acc1"] = 40.0   # a 10-point gap on the RST: its PGD-20 number overstated it
    large = claims.existence_all(base + aa)
    assert large[0]["verdict"] == "AutoAttack numbers used for C1a" and large[1]["verdict"] != claims.HOLDS
    assert "AutoAttack accuracy" in large[1]["rule"] and "PGD-20 accuracy" in small[1]["rule"]
