"""R2S: forced members reproduce their tickets, packed masks round-trip, the file is
about one weight set plus N bits per weight, foreign tickets are refused, and the CLI
writes every attack with its protocol (Digits, tiny models). The evaluation's
invariants are in test_r2s_eval.py, the attacks' in test_randomized.py."""
import copy
import functools
import json
import os
import pathlib

import numpy as np
import pytest
import torch

import test_trans
from data import build_dataset
from models import build_model, masked_layers
from models.r2s import STRUCTURE_KEYS, build_r2s, load_r2s, pack_masks, unpack_masks
from trainers.tasks import set_trainable
from utils.config import parse_config
from utils.errors import UserError
from utils.run_dir import config_dict
from tests.helpers import train_natural

KS = (0.1, 0.3, 0.5)
FLAGS = ["--set", "Digits", "--arch", "cResNet18", "--width-mult", "0.125", "--init", "signed_constant"]


def digits(n_train=128, n_val=64):
    """(x_train, y_train, x_val, y_val) tensors of the bundled digits (train shifts seeded)."""
    data = build_dataset(parse_config(["--set", "Digits"]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tr = [data.train[i] for i in range(n_train)]
    va = [data.val[i] for i in range(n_val)]
    return (torch.stack([a for a, _ in tr]), torch.tensor([b for _, b in tr]),
            torch.stack([a for a, _ in va]), torch.tensor([b for _, b in va]))


def random_network(k, net_seed=0):
    torch.manual_seed(net_seed)
    cfg = parse_config(FLAGS + ["--prune-rate", str(k)])
    return cfg, build_model(cfg, 10, 3, 32, (0.5,) * 3, (0.5,) * 3)


def refresh_bn(model, x):
    """BatchNorm running statistics of ``model`` as it is now (its mask), from the batch ``x``."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: one batch gives its exact statistics
        model.train()
        model(x)
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def make_ticket(k, x, net_seed=0, score_seed=0):
    """A ticket of the random network ``net_seed``: own random scores, BN statistics of its own mask."""
    cfg, model = random_network(k, net_seed)
    gen = torch.Generator().manual_seed(1000 + score_seed)
    with torch.no_grad():
        for m in masked_layers(model):
            m.scores.copy_(torch.randn(m.scores.shape, generator=gen))
    return cfg, refresh_bn(model, x)


def trained_network(x, y, steps=20):
    """A tiny cResNet18 (k = 1) whose weights are trained naturally (Adam): worth attacking."""
    cfg, model = random_network(1.0)
    set_trainable(model, weights=True, scores=False)
    return train_natural(model, x, y, steps=steps, lr=0.01, adam=True).requires_grad_(False)


def ticket_of(network, k, x, seed=0):
    """A ticket drawn from a trained network (same weights): top-k of |w| with 10% noise."""
    model = copy.deepcopy(network)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in masked_layers(model):
            m.scores.copy_(m.weight.abs() * (1 + 0.1 * torch.rand(m.weight.shape, generator=gen)))
            m.set_prune_rate(k)
    return parse_config(FLAGS + ["--prune-rate", str(k)]), refresh_bn(model, x)


def save_ticket(path, cfg, model, k, original=False):
    """Our checkpoint format, or the original's (module.-prefixed keys, no k, no config)."""
    state = model.state_dict()
    if original:
        torch.save({"state_dict": {f"module.{n}": v for n, v in state.items()}, "arch": cfg.arch,
                    "best_acc1": 0.0}, path)
    else:
        torch.save({"state_dict": state, "arch": cfg.arch, "prune_rate": float(k), "task": "search",
                    "config": config_dict(cfg)}, path)


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def tickets(data):
    x, y, _, _ = data
    return [(f"t_{k}.pth", k, make_ticket(k, x, score_seed=i)[1]) for i, k in enumerate(KS)]


def r2s_of(tickets, seed=0):
    """build_r2s with the structure and data description that loading needs."""
    cfg = parse_config(FLAGS)
    return build_r2s(tickets, {k: getattr(cfg, k) for k in STRUCTURE_KEYS},
                     {"num_classes": 10, "in_channels": 3, "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
                     seed=seed)


def test_forced_member_gives_exactly_its_tickets_predictions(tickets, data):
    x = data[2][:32]
    bn = [dict(t[2].named_buffers())["bn1.running_mean"] for t in tickets]
    assert not torch.equal(bn[0], bn[1]), "tickets must differ in BN statistics for this test to mean anything"
    r2s = r2s_of(tickets).eval()
    for i, (_, _, model) in enumerate(tickets):
        with torch.no_grad():
            expected = model(x)
            r2s.force_member(i)
            assert torch.equal(r2s(x), expected)
            assert torch.equal(r2s.member(i)(x), expected)
    r2s.force_member(None)


def test_switch_draws_one_member_per_batch_reproducibly(tickets, data):
    x = data[2][:8]
    with torch.no_grad():
        outs = [t[2](x) for t in tickets]
        r2s = r2s_of(tickets, seed=3).eval()

        def drawn():
            logits = r2s(x)
            return [i for i, o in enumerate(outs) if torch.equal(o, logits)]

        first = [drawn() for _ in range(30)]
        r2s.reseed(3)
        again = [drawn() for _ in range(30)]
    assert all(len(d) == 1 for d in first), "each forward pass must be exactly one member"
    assert {d[0] for d in first} == set(range(len(tickets)))
    assert first == again


def test_masks_round_trip_through_the_packed_format(tickets, data, tmp_path):
    masks = {"a": torch.rand(3, 5, 7) > 0.5, "b": torch.rand(11, 1, 1, 1) > 0.3}  # 116 bits: not a byte multiple
    layers = [("a", (3, 5, 7)), ("b", (11, 1, 1, 1))]
    back = unpack_masks(pack_masks(masks, ["a", "b"]), layers)
    assert all(torch.equal(back[n], masks[n]) for n in masks)
    r2s = r2s_of(tickets).eval()
    path = tmp_path / "r2s.pth"
    torch.save(r2s.state(), path)
    loaded = load_r2s(str(path)).eval()
    x = data[2][:16]
    for i in range(len(tickets)):
        assert all(torch.equal(a, b) for a, b in zip(r2s.masks(i).values(), loaded.masks(i).values()))
        with torch.no_grad():
            assert torch.equal(loaded(x, member=i), tickets[i][2](x))
    assert loaded.names == [t[0] for t in tickets] and loaded.prune_rates == list(KS)


def test_file_is_one_weight_set_plus_n_bits_per_weight(tickets, tmp_path):
    r2s = r2s_of(tickets)
    path = tmp_path / "r2s.pth"
    torch.save(r2s.state(), path)
    weights = sum(m.weight.numel() for m in masked_layers(tickets[0][2]))
    shared = sum(v.numel() * v.element_size() for k, v in r2s.net.state_dict().items() if k not in r2s.bn_names)
    bn = sum(v.numel() * v.element_size() for k, v in r2s.net.state_dict().items() if k in r2s.bn_names)
    n = len(tickets)
    ideal = shared + n * int(np.ceil(weights / 8)) + n * bn
    size = os.path.getsize(path)
    assert ideal <= size <= 1.05 * ideal + 32_000, (size, ideal)
    separate = n * 2 * 4 * weights  # N tickets as float32 weights + scores
    assert size < 0.5 * separate


def test_tickets_from_different_random_networks_are_refused(data):
    x, y, _, _ = data
    a = make_ticket(0.3, x[:16], net_seed=0)[1]
    b = make_ticket(0.5, x[:16], net_seed=1)[1]
    with pytest.raises(UserError, match="different random networks"):
        build_r2s([("a.pth", 0.3, a), ("b.pth", 0.5, b)])


TRAINED_KS = (0.85, 0.9, 0.95)


@functools.lru_cache(maxsize=1)
def shared_network():
    """(train images, trained tiny network), built once per test session; never modify it."""
    x, y, _, _ = digits(n_train=192, n_val=1)
    return x, trained_network(x, y)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    x, network = shared_network()
    folder = tmp_path_factory.mktemp("r2s_tickets")
    for i, k in enumerate(TRAINED_KS):
        cfg, model = ticket_of(network, k, x, seed=i)
        save_ticket(folder / f"cResNet18_{k}.pth", cfg, model, k)
    return folder


def test_r2s_cli_writes_every_attack_with_its_protocol(trained_dir, tmp_path):
    """test_trans.py --r2s with --eval_attack autoattack: both transfer protocols, every adaptive
    attack including AutoAttack rand, the worst case; the packed model and the plot."""
    out = test_trans.main(FLAGS + ["--pretrained", str(trained_dir), "--r2s", "--n_eval", "8", "--eval_passes",
                                   "2", "--eot_samples", "3", "--eot_steps", "2", "--eval_attack", "autoattack",
                                   "--aa_steps", "2", "--epsilon", "2", "--log-dir", str(tmp_path),
                                   "--name", "r", "--workers", "0", "--seed", "0"])
    run = pathlib.Path(out["model_file"]).parent.parent
    assert run.name == "width_mult=0.125" and run.parent.name == "transfer"  # the original's layout
    assert run.parent.parent.parent.parent.parent == tmp_path
    with open(run / "r2s.json") as fh:
        saved = json.load(fh)
    names = [f"cResNet18_{k}.pth" for k in TRAINED_KS]
    assert saved["natural_acc1"]["mean"] == out["natural_acc1"]["mean"]
    assert [m["file"] for m in saved["members"]] == names
    attacks = saved["attacks"]
    adaptive = ["switch_pgd20", "eot_pgd", "ensemble_pgd", "arc", "autoattack_rand"]
    assert list(attacks) == ["transfer_paper", "transfer_paper_min", "transfer_strong", "transfer_strong_min",
                             *adaptive]
    for key in ("transfer_paper", "transfer_strong"):
        assert set(attacks[key]) == {*names, "protocol"} and attacks[key]["protocol"]["passes"] == 1
    assert attacks["transfer_paper"]["protocol"]["early_stop"] and not attacks["transfer_strong"]["protocol"][
        "early_stop"]
    for key in adaptive:
        assert len(attacks[key]["per_pass"]) == 2 and attacks[key]["protocol"]["n_eval"] == 8
        assert attacks[key]["protocol"]["epsilon"] == 2.0 and attacks[key]["protocol"]["passes"] == 2
    assert attacks["eot_pgd"]["protocol"]["eot_exact"] and attacks["eot_pgd"]["protocol"]["eot_samples"] == 3
    aa = attacks["autoattack_rand"]["protocol"]  # read back from the reference objects that ran
    assert aa["steps"] == 2 and aa["eot_samples"] == 20 and aa["version"] == "rand" and aa["every_example"]
    assert aa["implementation"].startswith("pyautoattack") and aa["attacks"] == ["apgd-ce", "apgd-dlr"]
    assert aa["expectation"] == "exact over members" and aa["early_stop"] is False
    assert len(aa["seeds"]) == 2 and len(set(aa["seeds"])) == 2, "one batch, two passes: two different seeds"
    assert attacks["switch_pgd20"]["protocol"]["early_stop"] is False
    assert all(attacks["transfer_strong"][n]["mean"] <= attacks["transfer_paper"][n]["mean"] for n in names)
    assert saved["worst_case"]["protocol"] == ["natural", "transfer_paper", "transfer_strong", *adaptive]
    assert saved["disk"]["r2s_file_bytes"] < saved["disk"]["ticket_files_bytes"]
    assert (run / "robust_vs_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(load_r2s(saved["model_file"]).members) == len(TRAINED_KS)
