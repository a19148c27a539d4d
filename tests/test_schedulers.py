"""Every LR policy at a few epochs, and the optimiser's parameter groups."""
import pytest
import torch

from models import masked_layers
from trainers.optim import build_optimizer
from trainers.schedulers import LR_POLICIES, get_policy
from trainers.tasks import set_trainable
from utils.errors import UserError
from tests.helpers import tiny_cfg, tiny_model

EXPECTED = {  # policy: {epoch: lr / base lr} with base lr 0.1, 160 epochs, warmup 0
    "constant_lr": {0: 1, 100: 1},
    "cifar_piecewise": {0: 1, 79: 1, 80: 0.1, 119: 0.1, 120: 0.01},
    "cifar_piecewise_adv": {49: 1, 50: 0.1, 150: 0.01},
    "multistep_lr": {29: 1, 30: 0.1, 60: 0.01},
    "multistep_lr_imagenet": {0: 1, 29: 1, 30: 0.1, 60: 0.01},
    "multistep_lr_imagenet_free": {0: 1, 7: 1, 8: 0.1, 16: 0.01},  # every ceil(30 / 4) epochs
    "cosine_lr": {0: 1, 80: 0.5, 160: 0},
    "ssfd": {0: 1, 4: 5, 5: 2.5, 9: 0.15625, 10: 1, 13: 4},
}


def opt():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


@pytest.mark.parametrize("name", sorted(LR_POLICIES.names()))
def test_policy_values(name):
    cfg = tiny_cfg("--lr_policy", name, "--multistep", "30", "60", "--epochs", "160")
    o = opt()
    set_lr = get_policy(o, cfg)
    for epoch, factor in EXPECTED[name].items():
        assert set_lr(epoch) == pytest.approx(0.1 * factor, abs=1e-9)
        assert o.param_groups[0]["lr"] == pytest.approx(0.1 * factor, abs=1e-9)


def test_every_policy_has_expectations():
    assert set(EXPECTED) == set(LR_POLICIES.names())


@pytest.mark.parametrize("name", ["constant_lr", "cosine_lr"])
def test_linear_warmup(name):
    set_lr = get_policy(opt(), tiny_cfg("--lr_policy", name, "--warmup_length", "4", "--lr", "0.4"))
    assert [round(set_lr(e), 6) for e in range(4)] == [0.1, 0.2, 0.3, 0.4]


def test_multistep_needs_milestones():
    with pytest.raises(UserError, match="--multistep"):
        get_policy(opt(), tiny_cfg("--lr_policy", "multistep_lr"))


def test_unknown_policy_lists_valid_names():
    with pytest.raises(Exception, match="cosine_lr"):
        get_policy(opt(), tiny_cfg("--lr_policy", "cosine"))


def test_two_groups_by_name_and_no_bn_decay():
    """The original's groups: names containing "bn" first (so a shortcut's BatchNorm,
    ``shortcut.1``, is in the other group), then the rest; --no-bn-decay acts on the first."""
    model = tiny_model("--bn-type", "LearnedBatchNorm")
    set_trainable(model, weights=True, scores=False)
    o = build_optimizer(tiny_cfg("--no-bn-decay", "--wd", "0.01"), model)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [[names[id(p)] for p in g["params"]] for g in o.param_groups]
    assert [g["weight_decay"] for g in o.param_groups] == [0.0, 0.01]
    assert groups[0] == [n for n, p in model.named_parameters() if "bn" in n and p.requires_grad]
    assert "layer2.0.shortcut.1.weight" in groups[1] and "conv1.weight" in groups[1]
    assert not any(n.endswith("scores") for g in groups for n in g)


def test_search_keeps_an_empty_bn_group():
    model = tiny_model()
    set_trainable(model, weights=False, scores=True)
    o = build_optimizer(tiny_cfg(), model)
    assert [len(g["params"]) for g in o.param_groups] == [0, len(masked_layers(model))]


def test_adam_has_no_weight_decay_and_nesterov():
    model = tiny_model()
    adam = build_optimizer(tiny_cfg("--optimizer", "adam", "--wd", "0.1"), model)
    assert isinstance(adam, torch.optim.Adam) and [g["weight_decay"] for g in adam.param_groups] == [0]
    assert build_optimizer(tiny_cfg("--nesterov"), model).defaults["nesterov"] is True
