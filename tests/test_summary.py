"""tickets.py summary: one row per training run's results.json, numeric sorting, CSV and markdown."""
import csv
import io
import json
import os


import tickets
from tests.helpers import run_cli


def fake_run(root, name, k, natural, robust, seed=0, attack="pgd"):
    """A run folder as main.py leaves it (results.json, settings.txt) and an -e record in eval/."""
    folder = os.path.join(str(root), "preset", name, f"prune_rate={k}", "search")
    os.makedirs(os.path.join(folder, "eval"))
    protocol = {"attack": attack, "epsilon": 8, "steps": 20, "step_size": 2.0, "restarts": 1, "early_stop": True,
                "n_eval": None} if attack else {"attack": None}
    results = {"task": "search", "arch": "cResNet18", "set": "Digits", "prune_rate": k, "epochs_done": 3,
               "last_natural_acc1": natural, "last_robust_acc1": robust, "best_epoch": 1,
               "best_natural_acc1": natural + 1, "best_robust_acc1": robust, "eval_protocol": protocol,
               "selection": "test split (the paper's protocol: the reported split also picks the best epoch)"}
    with open(os.path.join(folder, "results.json"), "w") as fh:
        json.dump(results, fh)
    with open(os.path.join(folder, "settings.txt"), "w") as fh:
        fh.write(f"seed: {seed}\nname: {name}\n")
    with open(os.path.join(folder, "eval", "20260101T000000Z.json"), "w") as fh:
        json.dump({"natural_acc1": 1.0, "evaluate": True}, fh)  # an -e record, not a run
    return folder


def test_summary_rows_sorted_numerically_and_written_as_csv_and_markdown(tmp_path, capsys):
    fake_run(tmp_path, "a", 0.1, 9.5, 4.0, seed=1)
    fake_run(tmp_path, "b", 0.5, 10.25, None, attack=None)
    fake_run(tmp_path, "c", 0.3, 80.0, 40.0, seed=None)
    rows = tickets.main(["summary", str(tmp_path), "--sort", "natural"])
    assert [r["natural"] for r in rows] == [9.5, 10.25, 80.0]  # numbers, not strings ("10.25" < "9.5")
    assert [r["run"] for r in rows] == [os.path.join("preset", n, f"prune_rate={k}", "search")
                                        for n, k in (("a", 0.1), ("b", 0.5), ("c", 0.3))]
    first = rows[0]
    assert (first["arch"], first["set"], first["k"], first["task"], first["seed"], first["epochs"]) == \
        ("cResNet18", "Digits", 0.1, "search", 1, 3)
    assert first["protocol"] == "pgd-20 eps 8/255 step 2/255, early stop, 1 restart, n=all"
    assert rows[1]["protocol"] == "natural only" and rows[1]["robust"] is None and rows[2]["seed"] is None
    assert first["selection"] == "test split"
    with open(tmp_path / "summary.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [t["natural"] for t in table] == ["9.5", "10.25", "80.0"] and table[1]["robust"] == ""
    markdown = (tmp_path / "summary.md").read_text()
    assert markdown in capsys.readouterr().out and len(markdown.splitlines()) == 2 + 3
    desc = tickets.main(["summary", str(tmp_path), "--sort", "robust", "--desc", "--out", str(tmp_path / "o")])
    assert [r["robust"] for r in desc] == [40.0, 4.0, None]  # empty cells last
    assert list(csv.DictReader(io.StringIO((tmp_path / "o" / "summary.csv").read_text())))[0]["robust"] == "40.0"


def test_summary_errors_are_one_line(tmp_path):
    proc = run_cli("tickets.py", "summary", tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: no results.json of a training run under '{tmp_path}'"
    proc = run_cli("tickets.py", "summary", tmp_path, "--sort", "acc")
    assert proc.returncode == 2 and "invalid choice: 'acc'" in proc.stderr and "Traceback" not in proc.stderr
