"""test_trans.py: the source x target matrix under PGD-20 transfer (Digits, tiny tickets)."""
import csv
import json

import pytest
import torch

import test_trans
from data import build_dataset, make_loader, subset
from tests.helpers import run_cli
from tests.test_r2s import FLAGS, make_ticket, save_ticket, shared_network, ticket_of
from trainers.evaluate import EVAL_ATTACKS, evaluate
from trainers.transfer import compute_transfer, k_from_name, kept_fraction, load_tickets
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
                   "--name", "tt", timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped notes.pth" in proc.stderr
    run = tmp_path / "no_config" / "tt" / "prune_rate=0.9" / "transfer" / "width_mult=0.125"
    with open(run / "transfer_matrix.json") as fh:
        rep = json.load(fh)
    names = [t[0] for t in TICKETS]
    assert rep["files"] == sorted(names) and rep["sources"] == rep["files"]
    assert rep["prune_rates"] == [dict((t[0], t[1]) for t in TICKETS)[n] for n in rep["files"]]
    matrix = rep["matrix"]
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    assert [matrix[i][i] for i in range(3)] == rep["robust_acc1"]
    assert rep["skipped"][0]["file"] == "notes.pth" and rep["n_eval"] == 16
    with open(run / "transfer_matrix.csv") as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == 5 and rows[1][0] == "natural" and len(rows[2]) == 4
    assert abs(float(rows[2][1]) - matrix[0][0]) < 0.006
    for png in ("transfer_matrix.png", "robust_vs_k.png"):
        assert (run / png).read_bytes()[:8] == PNG
    assert len(proc.stdout.strip().splitlines()) == 3  # one printed list per source


def test_diagonal_is_each_tickets_white_box_pgd20_and_default_is_the_source_row(ticket_dir):
    cfg = parse_config(FLAGS + ["--n_eval", "16", "--epsilon", "1", "--seed", "5", "--workers", "0",
                                "--test_batch_size", "8"])
    data = build_dataset(cfg)
    device = torch.device("cpu")
    tickets, skipped = load_tickets(cfg, str(ticket_dir), data.info, device)
    assert [s["file"] for s in skipped] == ["notes.pth"]
    loader = make_loader(subset(data.val, 16), 8, False, cfg)
    rows, natural, robust = compute_transfer(cfg, tickets, [0, 1, 2], loader, device)
    for s, ticket in enumerate(tickets):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            white_box = evaluate(ticket.model, loader, device, attack=EVAL_ATTACKS.get("pgd")(cfg))["acc1"]
        assert rows[s][s] == pytest.approx(white_box, abs=1e-9)
        assert robust[s] == rows[s][s] and robust[s] < natural[s]
    row, _, robust_default = compute_transfer(cfg, tickets, [1], loader, device)
    assert row == [rows[1]] and robust_default == robust


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
