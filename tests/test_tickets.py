"""tickets.py export: a ticket file rebuilds the checkpoint's logits exactly, in about 1 + k bits per weight."""
import json
import os

import pytest
import torch

from models import build_model
import tickets
from tests.helpers import tiny_cfg
from trainers.checkpoint_config import apply_checkpoint_structure
from trainers.ticket_export import export
from utils.checkpoint import extract_state_dict, load_checkpoint
from utils.errors import UserError, cli_main
from utils.run_dir import config_dict
from utils.ticket_format import pack_bits, unpack_bits


def save_checkpoint(path, *flags, k=0.3, seed=0):
    """A main.py-style checkpoint of a tiny cResNet18 whose scores and BN statistics are not their init."""
    cfg = tiny_cfg("--prune-rate", str(k), *flags)
    torch.manual_seed(seed)
    model = build_model(cfg, 10)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("scores"):
                t.normal_()
        model.train()(torch.rand(16, 3, 32, 32))  # BN running statistics move
    torch.save({"arch": cfg.arch, "prune_rate": k, "task": "search", "config": config_dict(cfg), "epoch": 3,
                "best_acc1": 40.0, "natural_acc1_at_best_robustness": 70.0, "state_dict": model.state_dict()}, path)
    return cfg, model.eval()


def logits_of(path, x):
    ckpt = load_checkpoint(str(path))
    cfg = tiny_cfg()
    for key, value in ckpt["config"].items():
        setattr(cfg, key, value)
    model = build_model(cfg, 10, prune_rate=ckpt["prune_rate"])
    model.load_state_dict(extract_state_dict(ckpt))
    with torch.no_grad():
        return model.eval()(x)


def test_bits_round_trip():
    flags = torch.rand(1001) > 0.7
    packed = pack_bits(flags)
    assert packed.dtype == torch.uint8 and packed.numel() == 126
    assert torch.equal(unpack_bits(packed, 1001), flags)


@pytest.mark.parametrize("flags,encoding", [(("--init", "signed_constant"), "signed_constant"),
                                            (("--init", "kaiming_normal"), "kept"),
                                            (("--init", "signed_constant", "--conv_type", "SubnetConv_filter",
                                              "--last-layer-dense"), "signed_constant")])
def test_export_then_import_gives_equal_logits(tmp_path, flags, encoding):
    _, model = save_checkpoint(tmp_path / "ckpt.pth", *flags)
    card = export(str(tmp_path / "ckpt.pth"), str(tmp_path / "t.pth"))
    ticket = torch.load(tmp_path / "t.pth", weights_only=True)
    assert {e["encoding"] for e in ticket["layers"].values()} == {encoding}
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    assert torch.equal(logits_of(tmp_path / "t.pth", x), expected)
    assert card["k"] == 0.3 and card["accuracy"]["robust_acc1"] is None  # natural training: no robust number
    assert json.loads((tmp_path / "t.card.json").read_text())["ticket"]["bytes"] == os.path.getsize(tmp_path / "t.pth")
    assert "k (fraction of weights kept) | 0.3" in (tmp_path / "t.card.md").read_text()


def test_signed_constant_ticket_is_about_one_plus_k_bits_per_weight(tmp_path):
    save_checkpoint(tmp_path / "ckpt.pth", "--init", "signed_constant", k=0.1)
    card = export(str(tmp_path / "ckpt.pth"), str(tmp_path / "t.pth"))
    n = card["ticket"]["masked_weights"]
    bits = 8 * card["ticket"]["bytes"]
    # 1 + k bits per masked weight, plus BN statistics and torch.save's zip headers (a tiny net: ~70 KB)
    assert (1 + 0.1) * n < bits < (1 + 0.1) * n + 8 * 80_000
    assert card["ticket"]["bytes"] < card["checkpoint"]["bytes"] / 10


def test_a_changed_weight_falls_back_to_kept_weights(tmp_path):
    cfg, model = save_checkpoint(tmp_path / "ckpt.pth", "--init", "signed_constant")
    ckpt = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    weight = ckpt["state_dict"]["conv1.weight"].view(-1)
    weight[:] = torch.nextafter(weight, torch.full_like(weight, 2.0))  # every weight one ulp up: +-c no more
    torch.save(ckpt, tmp_path / "ckpt.pth")
    export(str(tmp_path / "ckpt.pth"), str(tmp_path / "t.pth"))
    ticket = torch.load(tmp_path / "t.pth", weights_only=True)
    assert ticket["layers"]["conv1."]["encoding"] == "kept"
    assert ticket["layers"]["layer1.0.conv1."]["encoding"] == "signed_constant"
    model.load_state_dict(ckpt["state_dict"])
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(logits_of(tmp_path / "t.pth", x), model(x))


def test_kept_zero_weights_keep_the_sign_bit_encoding(tmp_path):
    """sign(0) = 0 in the signed-constant init: a kept weight that is exactly 0 (+0.0 or -0.0) is stored
    as an exception, not by falling back to the layer's fp32 weights."""
    cfg, model = save_checkpoint(tmp_path / "ckpt.pth", "--init", "signed_constant")
    ckpt = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    name = "layer1.0.conv1."
    keep = ckpt["state_dict"][name + "scores"].abs().flatten().argsort(descending=True)[:2]
    ckpt["state_dict"][name + "weight"].view(-1)[keep] = torch.tensor([0.0, -0.0])  # two kept weights
    torch.save(ckpt, tmp_path / "ckpt.pth")
    export(str(tmp_path / "ckpt.pth"), str(tmp_path / "t.pth"))
    entry = torch.load(tmp_path / "t.pth", weights_only=True)["layers"][name]
    assert entry["encoding"] == "signed_constant+zeros" and entry["zeros"].numel() == 2
    decoded = extract_state_dict(load_checkpoint(str(tmp_path / "t.pth")))[name + "weight"].view(-1)
    assert torch.equal(torch.signbit(decoded[keep]), torch.tensor([False, True])) and not decoded[keep].any()
    model.load_state_dict(ckpt["state_dict"])
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(logits_of(tmp_path / "t.pth", x), model(x))


def test_dense_checkpoint_is_not_a_ticket(tmp_path):
    cfg = tiny_cfg("--conv_type", "DenseConv")
    torch.save({"arch": cfg.arch, "prune_rate": 1.0, "config": config_dict(cfg),
                "state_dict": build_model(cfg, 10).state_dict()}, tmp_path / "dense.pth")
    with pytest.raises(UserError, match="no masked layers"):
        export(str(tmp_path / "dense.pth"), str(tmp_path / "t.pth"))
    assert not (tmp_path / "t.pth").exists()


def test_evaluate_takes_the_structure_from_the_ticket(tmp_path):
    save_checkpoint(tmp_path / "ckpt.pth", "--init", "signed_constant")
    export(str(tmp_path / "ckpt.pth"), str(tmp_path / "t.pth"))
    cfg = tiny_cfg()
    cfg.prune_rate, cfg.width_mult, cfg.given = -1, 1.0, []
    assert set(apply_checkpoint_structure(cfg, str(tmp_path / "t.pth"))) >= {"prune_rate", "width_mult", "arch"}
    assert (cfg.prune_rate, cfg.width_mult, cfg.init) == (0.3, 0.125, "signed_constant")
    cfg.given, cfg.width_mult = ["width_mult"], 0.25
    with pytest.raises(UserError, match=r"--width-mult 0.25 \(given\) vs 0.125 \(checkpoint\)"):
        apply_checkpoint_structure(cfg, str(tmp_path / "t.pth"))


def test_cli_export_of_a_run_directory_and_errors(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    save_checkpoint(run / "checkpoints" / "model_best.pth", "--init", "signed_constant", "--attack_type", "pgd")
    (run / "results.json").write_text(json.dumps({"best_natural_acc1": 71.0, "best_robust_acc1": 41.0,
                                                  "best_epoch": 2, "selection": "test",
                                                  "eval_protocol": {"attack": "pgd", "steps": 20}}))
    cli_main(tickets.main, ["export", str(run), "--out", str(tmp_path / "t.pth")])
    assert "bytes" in capsys.readouterr().out
    acc = json.loads((tmp_path / "t.card.json").read_text())["accuracy"]
    assert (acc["natural_acc1"], acc["robust_acc1"], acc["protocol"]["steps"]) == (71.0, 41.0, 20)
    with pytest.raises(SystemExit) as exc:
        cli_main(tickets.main, ["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "u.pth")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and "checkpoint" in err and "\n" not in err.strip()


def test_test_trans_loads_a_ticket_file_like_its_checkpoint(tmp_path):
    from types import SimpleNamespace
    from evaluation.transfer import load_ticket
    _, model = save_checkpoint(tmp_path / "ckpt.pth", "--init", "signed_constant", "--conv_type", "SubnetConv_row")
    export(str(tmp_path / "ckpt.pth"), str(tmp_path / "net_0.3.pth"))
    cfg = tiny_cfg()
    cfg.width_mult, cfg.init = 1.0, "kaiming_normal"  # the ticket's own structure wins in test_trans.py
    info = SimpleNamespace(num_classes=10, in_channels=3, image_size=32, mean=None, std=None)
    ticket = load_ticket(cfg, str(tmp_path / "net_0.3.pth"), info, torch.device("cpu"))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert ticket.prune_rate == 0.3 and torch.equal(ticket.model(x), model(x))
