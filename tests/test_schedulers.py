"""Every LR policy at a few epochs, and the optimiser's parameter groups."""
import pytest
import torch

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
    "multistep_lr_imagenet_free": {0: 1, 6: 1, 7: 0.1, 14: 0.01},
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


def test_two_groups_and_no_bn_decay():
    model = tiny_model("--bn-type", "LearnedBatchNorm")
    set_trainable(model, weights=False, scores=True)
    o = build_optimizer(tiny_cfg("--no-bn-decay", "--wd", "0.01"), model)
    decays = sorted(g["weight_decay"] for g in o.param_groups)
    assert decays == [0.0, 0.01]
    bn_group = next(g for g in o.param_groups if g["weight_decay"] == 0.0)
    assert all(p.dim() == 1 for p in bn_group["params"])
    trained = {id(p) for g in o.param_groups for p in g["params"]}
    assert id(model.conv1.scores) in trained and id(model.conv1.weight) not in trained


def test_adam_and_nesterov():
    model = tiny_model()
    assert isinstance(build_optimizer(tiny_cfg("--optimizer", "adam"), model), torch.optim.Adam)
    assert build_optimizer(tiny_cfg("--nesterov"), model).defaults["nesterov"] is True
