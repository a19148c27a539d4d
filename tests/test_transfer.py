"""test_trans.py: the source x target matrices under PGD-20 transfer, both protocols (Digits, tiny tickets)."""
import csv
import json
import re
import os

from types import SimpleNamespace

import pytest
import torch

import test_trans
from attacks.pgd import pgd20, pgd_transfer
from data import build_dataset, make_loader, subset
from tests.helpers import run_cli
from tests.test_r2s import FLAGS, digits, make_ticket, save_ticket, shared_network, ticket_of
from evaluation.evaluate import EVAL_ATTACKS, evaluate
from evaluation.transfer import (compute_transfer, k_from_name, kept_fraction, load_tickets, paper_and_strong,
                               source_rows, transfer_sources)
from utils.config import parse_config
from utils.errors import cli_main

PNG = b"\x89PNG\r\n\x1a\n"
# (file name, k, original format): k from the name and metadata / metadata only / the name only
TICKETS = [("cResNet18_0.85.pth", 0.85, False), ("searched.pth", 0.9, False), ("resnet18_0.95.pth", 0.95, True)]


@pytest.fixture(scope="module")
def ticket_dir(tmp_path_factory):
    x, network = shared_network()
    folder = tmp_path_factory.mktemp("tickets")
    for i, (name, k, original) in enumerate(TICKETS):
        cfg, model = ticket_of(network, k, x, seed=i)
        save_ticket(folder / name, cfg, model, k, original=original)
    cfg, model = make_ticket(0.2, x)
    save_ticket(folder / "notes.pth", cfg, model, 0.2, original=True)  # neither metadata nor k in the name
    return folder


def test_cli_writes_the_full_matrix(ticket_dir, tmp_path):
    proc = run_cli("test_trans.py", *FLAGS, "--pretrained", ticket_dir / "searched.pth", "--all_sources",
                   "--n_eval", "16", "--epsilon", "1", "--seed", "0", "--workers", "0", "--log-dir", tmp_path,
                   "--name", "tt", "--progress", "on", timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped notes.pth" in proc.stderr
    assert re.search(r"source 3/3 \S+: +\d+%\|", proc.stderr), "a progress bar per transfer source"
    run = tmp_path / "no_config" / "tt" / "prune_rate=0.9" / "transfer" / "width_mult=0.125"
    with open(run / "transfer_matrix.json") as fh:
        rep = json.load(fh)
    names = [t[0] for t in TICKETS]
    assert rep["files"] == sorted(names) and rep["sources"] == rep["files"]
    assert rep["prune_rates"] == [dict((t[0], t[1]) for t in TICKETS)[n] for n in rep["files"]]
    paper, strong = rep["matrices"]["paper"], rep["matrices"]["strong"]
    assert all(len(m) == 3 and all(len(row) == 3 for row in m) for m in (paper, strong))
    assert [paper[i][i] for i in range(3)] == rep["robust_acc1"]
    assert rep["skipped"][0]["file"] == "notes.pth" and rep["n_eval"] == 16
    assert rep["protocols"]["paper"]["early_stop"] is True and rep["protocols"]["strong"]["early_stop"] is False
    for protocol in (rep["protocols"]["paper"], rep["protocols"]["strong"], rep["robust_protocol"]):
        assert (protocol["epsilon"], protocol["steps"], protocol["step_size"], protocol["restarts"],
                protocol["seed"], protocol["examples"]) == (1, 20, 2, 1, 0, 16)
    with open(run / "transfer_matrix.csv") as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == 8 and rows[1][1] == "natural" and len(rows[2]) == 5
    assert [r[0] for r in rows[2:]] == ["strong"] * 3 + ["paper"] * 3
    assert abs(float(rows[2][2]) - strong[0][0]) < 0.006 and abs(float(rows[5][3]) - paper[0][1]) < 0.006
    for png in ("transfer_matrix.png", "robust_vs_k.png"):
        assert (run / png).read_bytes()[:8] == PNG
    # the original's lines first (paper protocol, paths as it built them), then one labelled line per row
    out = proc.stdout.strip().splitlines()
    assert len(out) == 3 * 4 + 6 + 1 and json.loads(out[-1])["matrices"] == rep["matrices"]  # last: JSON
    for s, source in enumerate(rep["sources"]):
        block = out[4 * s:4 * s + 4]
        assert block[:3] == [f"Robust Acc of {os.path.join(str(ticket_dir), f)}: {paper[s][j]:f}"
                             for j, f in enumerate(rep["files"])]
        assert block[3] == f"Acc list: {paper[s]}"
    assert out[12].startswith("strong transfer (PGD-20, per target the worse") and rep["sources"][0] in out[12]
    assert out[15].startswith(f"paper transfer (PGD-20 with early stop")


def test_diagonal_is_each_tickets_white_box_pgd20_and_default_is_the_source_row(ticket_dir):
    cfg = parse_config(FLAGS + ["--n_eval", "16", "--epsilon", "1", "--seed", "5", "--workers", "0",
                                "--test_batch_size", "8"])
    data = build_dataset(cfg)
    device = torch.device("cpu")
    tickets, skipped = load_tickets(cfg, str(ticket_dir), data.info, device)
    assert [s["file"] for s in skipped] == ["notes.pth"]
    loader = make_loader(subset(data.val, 16), 8, False, cfg)
    rows, natural, robust, _ = compute_transfer(cfg, tickets, [0, 1, 2], loader, device)
    assert all(s <= p for srow, prow in zip(rows["strong"], rows["paper"]) for s, p in zip(srow, prow))
    rows = rows["paper"]
    for s, ticket in enumerate(tickets):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            white_box = evaluate(ticket.model, loader, device, attack=EVAL_ATTACKS.get("pgd")(cfg))["acc1"]
        assert rows[s][s] == pytest.approx(white_box, abs=1e-9)
        assert robust[s] == rows[s][s] and robust[s] < natural[s]
    row, _, robust_default, _ = compute_transfer(cfg, tickets, [1], loader, device)
    assert row["paper"] == [rows[1]] and robust_default == robust


def test_kept_fraction_from_metadata_then_file_name():
    assert k_from_name("ckpt/resnet18_0.01.pth") == 0.01
    assert k_from_name("wrn_5e-2.state") == 0.05
    assert k_from_name("resnet18.pth") is None and k_from_name("resnet18_2.pth") is None
    assert kept_fraction({"prune_rate": 0.3}, "net_0.1.pth") == 0.3
    assert kept_fraction({"state_dict": {}}, "net_0.1.pth") == 0.1


@pytest.mark.parametrize("case, extra, message", [
    ("empty", ["--all_sources"], "no checkpoints"),
    ("folder", [], "is a folder"),
    ("missing", [], "not found"),
])
def test_bad_pretrained_is_a_one_line_error(case, extra, message, tmp_path, capsys):
    folder = tmp_path / "tickets"
    folder.mkdir()
    (folder / "readme.txt").write_text("no checkpoints here")
    target = folder / "nope_0.1.pth" if case == "missing" else folder
    argv = FLAGS + ["--pretrained", str(target), "--log-dir", str(tmp_path / "runs"), *extra]
    with pytest.raises(SystemExit) as exc:
        cli_main(test_trans.main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err


@pytest.fixture(scope="module")
def early_stop_fixture():
    """Three tickets of one trained tiny network and 32 validation digits, at eps 4/255: PGD-20
    fools every source example within a few steps, so the early stop matters."""
    x, network = shared_network()
    _, _, xv, yv = digits(n_train=1, n_val=32)
    return [ticket_of(network, k, x, seed=i)[1] for i, k in enumerate((0.85, 0.9, 0.95))], xv, yv


def test_one_trajectory_gives_exactly_pgd20_and_pgd_transfer(early_stop_fixture):
    models, x, y = early_stop_fixture
    x, y = x[:16], y[:16]
    torch.manual_seed(7)
    paper, strong = paper_and_strong(models[1], x, y, 4 / 255)
    torch.manual_seed(7)
    assert torch.equal(paper, pgd20(models[1], x, y, 4 / 255))
    torch.manual_seed(7)
    assert torch.equal(strong, pgd_transfer(models[1], x, y, 4 / 255))
    assert not torch.equal(paper, strong), "the fixture must make the two protocols differ"


def test_strong_transfer_accuracy_is_below_paper_where_early_stop_matters(early_stop_fixture):
    models, x, y = early_stop_fixture
    rows, correct = source_rows(models[1], models, [(x, y)], torch.device("cpu"), 4 / 255, seed=0)
    assert rows["paper"][1] == rows["strong"][1] == 0.0, "white-box: the source itself is fooled everywhere"
    for target in (0, 2):  # other tickets: early-stopped examples sit just past the source's boundary
        assert rows["strong"][target] <= rows["paper"][target] - 10, rows
    # strong is per target and example the worse of the two candidates: <= paper and <= highest-loss alone
    highest = (100.0 * correct["highest_loss"].double().mean(1)).tolist()
    assert all(s <= min(p, h) + 1e-9 for s, p, h in zip(rows["strong"], rows["paper"], highest))
    assert any(h > s for s, h in zip(rows["strong"], highest)) or any(
        p > s for s, p in zip(rows["strong"], rows["paper"])), "the fixture must make the worse-of matter"


def test_strong_is_never_above_paper_even_when_the_highest_loss_iterate_is_weaker(early_stop_fixture, monkeypatch):
    """A highest-loss candidate that fools nothing (the clean image) cannot lift strong above paper."""
    from evaluation import transfer_examples
    models, x, y = early_stop_fixture
    real = transfer_examples.paper_and_strong
    weak = lambda source, xb, yb, eps, step: (real(source, xb, yb, eps, step)[0], xb)  # noqa: E731
    correct = transfer_examples.source_correctness(models[1], models, [(x, y)], torch.device("cpu"), 4 / 255, 0,
                                                   examples=weak)
    rows = {p: transfer_examples.accuracy_row(c) for p, c in transfer_examples.protocol_correctness(correct).items()}
    assert rows["strong"] == rows["paper"]


def test_all_sources_and_r2s_in_one_run(ticket_dir, tmp_path):
    out = test_trans.main(FLAGS + ["--pretrained", str(ticket_dir), "--all_sources", "--r2s", "--n_eval", "8",
                                   "--eot_samples", "2", "--eot_steps", "2", "--eval_passes", "1", "--epsilon", "2",
                                   "--eval_step", "1.5",
                                   "--seed", "0", "--workers", "0", "--log-dir", str(tmp_path), "--name", "both"])
    run = tmp_path / "no_config" / "both" / "prune_rate=0.0" / "transfer" / "width_mult=0.125"
    with open(run / "transfer_matrix.json") as fh:
        matrix = json.load(fh)
    assert matrix["matrices"] == out["matrices"]
    steps = [matrix["protocols"][p]["step_size"] for p in ("paper", "strong")] + [matrix["robust_protocol"]["step_size"]]
    assert steps == [1.5, 1.5, 1.5]  # --eval_step, recorded where it ran
    with open(run / "r2s.json") as fh:
        r2s = json.load(fh)
    assert {name: a["protocol"]["step_size"] for name, a in r2s["attacks"].items()
            if isinstance(a, dict) and "protocol" in a and a["protocol"].get("step_size") is not None} == {
        name: 1.5 for name in ("transfer_paper", "transfer_strong", "transfer_paper_min", "transfer_strong_min",
                               "switch_pgd20", "eot_pgd", "ensemble_pgd", "arc")}
    assert r2s["natural_acc1"] == out["r2s"]["natural_acc1"]
    for s, name in enumerate(out["files"]):  # R2S's transfer rows are the matrix's own examples
        assert r2s["attacks"]["transfer_paper"][name]["mean"] == pytest.approx(sum(out["matrices"]["paper"][s]) / 3)
        assert r2s["attacks"]["transfer_strong"][name]["mean"] <= r2s["attacks"]["transfer_paper"][name]["mean"]
    assert [t["file"] for t in r2s["ticket_selection"]] == out["files"]
    assert r2s["ticket_selection"][0]["task"] == "search" and out["ticket_selection"] == r2s["ticket_selection"]
    protocol = r2s["eval_protocol"]  # the headline (worst case) number's protocol, next to it
    assert protocol["epsilon"] == 2 and protocol["examples"] == 8 and protocol["headline"] == "worst_case"
    assert "transfer_strong" in protocol["covers"] and "eot_pgd" in protocol["covers"]
    assert len(out["matrices"]["strong"]) == 3 and (run / "checkpoints" / "r2s.pth").is_file()
    for name in ("transfer_matrix.csv", "transfer_matrix.png", "robust_vs_k.png"):
        assert (run / name).is_file()


def test_sources_follow_the_mode():
    tickets = [SimpleNamespace(path=f"/t/{n}_0.{n}.pth") for n in (1, 2, 3)]
    mode = SimpleNamespace
    assert transfer_sources(mode(all_sources=True), tickets, None) == [0, 1, 2]
    assert transfer_sources(mode(all_sources=False), tickets, "/t/2_0.2.pth") == [1]  # --r2s with a file: its row too
    assert transfer_sources(mode(all_sources=False), tickets, None) == []  # a folder with --r2s only
