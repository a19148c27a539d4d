"""Seeded tickets (seed + entropy-coded masks + BN statistics) and R2S bundles of them."""
import json
import math
import os

import pytest
import torch

import main as main_entry
import test_trans
import tickets
from models.seeded import from_file
from tests.test_tickets import logits_of, save_checkpoint
from trainers.ticket_export import export
from utils.errors import UserError, cli_main
from utils.mask_coding import decode_mask, encode_mask
from utils.ticket_format import json_tensor

EVAL = ["--set", "Digits", "--image_size", "8", "--n_eval", "64", "--workers", "0", "--attack_type", "pgd",
        "--seed", "0"]


def entropy(p):
    return 0.0 if p in (0.0, 1.0) else -p * math.log2(p) - (1 - p) * math.log2(1 - p)


@pytest.mark.parametrize("p", [0.0, 0.01, 0.1, 0.5, 1.0])
def test_masks_are_coded_at_the_layers_entropy(p):
    n = 40_000
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.randperm(n, generator=torch.Generator().manual_seed(1))[:int(p * n)]] = True
    kept, coded = encode_mask(keep.view(200, 200))
    assert kept == int(p * n)
    assert 8 * len(coded) <= n * entropy(p) + 64  # H(p) per bit plus at most two 32-bit words
    assert torch.equal(decode_mask(kept, coded, (200, 200)), keep.view(200, 200))
    if 0 < kept < n:
        with pytest.raises(UserError, match="damaged|decodes to"):
            decode_mask(kept + 1, coded, (200, 200))


def test_seeded_export_gives_equal_logits_in_fewer_bytes(tmp_path):
    _, model = save_checkpoint(tmp_path / "ckpt.pth", "--init", "kaiming_normal", "--seed", "0", k=0.1)
    seeded = export(str(tmp_path / "ckpt.pth"), str(tmp_path / "s.pth"))
    portable = export(str(tmp_path / "ckpt.pth"), str(tmp_path / "p.pth"), portable=True)
    assert seeded["ticket"]["format"] == "rst-ticket v2 (seeded)" and seeded["ticket"]["not_seeded"] is None
    assert portable["ticket"]["format"] == "rst-ticket v1 (portable)"
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    assert torch.equal(logits_of(tmp_path / "s.pth", x), expected)
    assert torch.equal(logits_of(tmp_path / "p.pth", x), expected)
    assert seeded["ticket"]["bytes"] * 4 < portable["ticket"]["bytes"]  # kept fp32 weights: ~32k bits; seeded: H(k)


def test_trained_weights_stay_portable(tmp_path):
    """A kept weight that is not its seed's (ft_*, RTT) cannot be regenerated: today's format."""
    save_checkpoint(tmp_path / "ckpt.pth", "--init", "signed_constant", "--seed", "0")
    ckpt = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    scores = ckpt["state_dict"]["layer2.0.conv1.scores"]
    ckpt["state_dict"]["layer2.0.conv1.weight"].view(-1)[scores.abs().view(-1).argmax()] *= 1.5
    torch.save(ckpt, tmp_path / "ckpt.pth")
    card = export(str(tmp_path / "ckpt.pth"), str(tmp_path / "t.pth"))
    assert card["ticket"]["format"] == "rst-ticket v1 (portable)"
    assert "layer2.0.conv1" in card["ticket"]["not_seeded"]
    assert "not seeded" in (tmp_path / "t.card.md").read_text()


def tamper_seed(path, seed):
    """The file as another generator would regenerate it: its network's seed changed."""
    ticket = torch.load(path, weights_only=True)
    header = from_file(ticket, path)
    header["network"]["seed"] = seed
    ticket["header"] = json_tensor({k: header[k] for k in ("config", "card", "coder", "coder_version", "masks",
                                                          "masks_sha256", "layout", "network")})
    torch.save(ticket, path)


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """Three Digits searches (cResNet18 x0.25, 8x8 images) of one random network: k = 0.1, 0.3, 0.5."""
    tmp = tmp_path_factory.mktemp("seeded")
    runs = {}
    for k in ("0.1", "0.3", "0.5"):
        out = main_entry.main(EVAL[:-2] + ["--arch", "cResNet18", "--width-mult", "0.25", "--prune-rate", k, "-b", "64",
                                           "--low-data", "0.3", "--epochs", "3", "--val_every", "3", "--lr_policy",
                                           "constant_lr", "--seed", "0", "--log-dir", str(tmp), "--name", "t",
                                           "--attack_iters", "1", "--task", "search"])
        assert out["epochs_done"] == 3
        runs[k] = os.path.join(str(tmp), "no_config", "t", f"prune_rate={k}", "search", "width_mult=0.25")
    return tmp, runs


def evaluate(path, log_dir):
    out = main_entry.main(EVAL + ["-e", "--pretrained", str(path), "--log-dir", str(log_dir)])
    return out["natural_acc1"], out["robust_acc1"]


def test_digits_ticket_at_the_entropy_bound_evaluates_like_its_checkpoint(digits_runs, tmp_path, capsys):
    _, runs = digits_runs
    cli_main(tickets.main, ["export", runs["0.1"], "--out", str(tmp_path / "t.pth")])
    assert "(seeded)" in capsys.readouterr().out
    card = json.loads((tmp_path / "t.card.json").read_text())
    n, size = card["ticket"]["masked_weights"], os.path.getsize(tmp_path / "t.pth")
    coded = torch.load(tmp_path / "t.pth", weights_only=True)["coded"].numel()
    assert 8 * coded <= (entropy(0.1) + 0.05) * n and size - coded < 16 * 1024  # masks at H(k); header < 16 KB
    ckpt = os.path.join(runs["0.1"], "checkpoints", "model_best.pth")
    natural, robust = evaluate(ckpt, tmp_path / "a")
    assert 10 < natural and evaluate(tmp_path / "t.pth", tmp_path / "b") == (natural, robust)
    x = torch.rand(16, 3, 8, 8)
    assert torch.equal(logits_of(tmp_path / "t.pth", x), logits_of(ckpt, x))


def test_a_ticket_another_generator_regenerates_differently_is_refused(digits_runs, tmp_path, capsys):
    _, runs = digits_runs
    export(runs["0.1"], str(tmp_path / "t.pth"))
    tamper_seed(str(tmp_path / "t.pth"), 1)
    with pytest.raises(SystemExit) as exc:
        cli_main(main_entry.main, EVAL + ["-e", "--pretrained", str(tmp_path / "t.pth"), "--log-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err and err.startswith("error: seeded ticket")
    assert "first difference: conv1.weight" in err and "--portable" in err


def test_r2s_bundle_loads_like_its_three_checkpoints(digits_runs, tmp_path, capsys):
    tmp, runs = digits_runs
    folder = tmp_path / "tickets"
    folder.mkdir()
    for k, run in runs.items():
        os.symlink(os.path.join(run, "checkpoints", "model_best.pth"), folder / f"cResNet18_{k}.pth")
    paths = [str(folder / f"cResNet18_{k}.pth") for k in runs]
    cli_main(tickets.main, ["bundle", *paths, "--out", str(tmp_path / "r2s_bundle.pth")])
    assert "3 tickets of one network (seed 0)" in capsys.readouterr().out
    flags = EVAL + ["--r2s", "--n_eval", "16", "--eval_passes", "1", "--eot_samples", "3", "--eot_steps", "1",
                    "--eval_step", "8", "--name", "r2s", "--log-dir"]
    from_bundle = test_trans.main(flags + [str(tmp_path / "a"), "--pretrained", str(tmp_path / "r2s_bundle.pth")])
    from_files = test_trans.main(flags + [str(tmp_path / "b"), "--pretrained", str(folder)])
    assert from_bundle["natural_acc1"] == from_files["natural_acc1"]
    assert [m["natural_acc1"] for m in from_bundle["members"]] == [m["natural_acc1"] for m in from_files["members"]]
    assert [m["prune_rate"] for m in from_bundle["members"]] == [0.1, 0.3, 0.5]
    assert from_bundle["disk"]["ticket_files_bytes"] < from_files["disk"]["ticket_files_bytes"] / 50


def test_a_bundle_refuses_a_ticket_of_another_network(digits_runs, tmp_path):
    _, runs = digits_runs
    save_checkpoint(tmp_path / "other.pth", "--init", "kaiming_normal", "--seed", "0")  # another width and set
    with pytest.raises(UserError, match=r"'.*other.pth' was searched in another random network .*width_mult"):
        tickets.main(["bundle", runs["0.1"], str(tmp_path / "other.pth"), "--out", str(tmp_path / "b.pth")])
    assert not (tmp_path / "b.pth").exists()


def test_a_bundle_of_portable_ticket_files_rebuilds_each_member(tmp_path):
    """Bundle inputs may be portable tickets (pruned weights 0): only kept weights must be the seed's."""
    models = {}
    for k in (0.2, 0.4):
        _, models[k] = save_checkpoint(tmp_path / f"c{k}.pth", "--init", "kaiming_normal", "--seed", "0", k=k)
        export(str(tmp_path / f"c{k}.pth"), str(tmp_path / f"net_{k}.pth"), portable=True)
    tickets.main(["bundle", str(tmp_path / "net_0.2.pth"), str(tmp_path / "net_0.4.pth"), "--out", str(tmp_path / "b.pth")])
    from models.seeded import decode_bundle
    from utils.checkpoint import load_checkpoint
    members = decode_bundle(load_checkpoint(str(tmp_path / "b.pth")), "b.pth")
    assert [name for name, _ in members] == ["net_0.2.pth", "net_0.4.pth"]
    x = torch.rand(4, 3, 32, 32)
    for (_, ckpt), k in zip(members, (0.2, 0.4)):
        torch.save(ckpt, tmp_path / "member.pth")
        with torch.no_grad():
            assert torch.equal(logits_of(tmp_path / "member.pth", x), models[k](x))
    ckpt = torch.load(tmp_path / "c0.4.pth", weights_only=True)
    ckpt["state_dict"]["conv1.weight"] *= 2  # trained weights (ft_*): no seed gives them
    torch.save(ckpt, tmp_path / "c0.4.pth")
    with pytest.raises(UserError, match=r"c0.4.pth' cannot join a bundle: the kept weights of 'conv1'"):
        tickets.main(["bundle", str(tmp_path / "c0.2.pth"), str(tmp_path / "c0.4.pth"), "--out", str(tmp_path / "x.pth")])


def test_main_evaluate_names_a_bundle_for_what_it_is(tmp_path, capsys):
    """main.py -e --pretrained BUNDLE: one line saying it is a bundle and which command reads it."""
    for k in (0.2, 0.4):
        save_checkpoint(tmp_path / f"c{k}.pth", "--init", "kaiming_normal", "--seed", "0", k=k)
    tickets.main(["bundle", str(tmp_path / "c0.2.pth"), str(tmp_path / "c0.4.pth"), "--out", str(tmp_path / "b.pth")])
    with pytest.raises(SystemExit) as exc:
        cli_main(main_entry.main, ["-e", "--pretrained", str(tmp_path / "b.pth"), "--log-dir", str(tmp_path / "r"),
                                   "--n_eval", "8", "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err
    assert "is a ticket bundle (2 tickets of one network)" in err and "test_trans.py --r2s" in err
