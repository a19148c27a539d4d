"""Golden: every LR schedule (tests/golden/schedules.json) and the epochs at which
main.py / train_full.py validate (tests/golden/validation.json), exactly.

Schedules: our parser reads the case's preset and flags, main.py's free-ImageNet
rewrite is applied, then the policy is called once per epoch; every rate must be
the original's float, bit for bit, in every parameter group.
"""
import json
import os

import pytest
import torch

from trainers.schedulers import apply_free_imagenet, get_policy
from trainers.state import should_validate
from utils.config import parse_config
from tests.helpers import ROOT

GOLDEN = os.path.join(ROOT, "tests", "golden")


def load(name):
    with open(os.path.join(GOLDEN, name)) as fh:
        return json.load(fh)


POLICIES = load("schedules.json")["policies"]
VALIDATION = load("validation.json")["cases"]


def two_group_optimizer():
    """The original's layout: an (often empty) "bn" group and the rest."""
    p = torch.nn.Parameter(torch.zeros(1))
    return torch.optim.SGD([{"params": []}, {"params": [p]}], lr=123.0)


@pytest.mark.parametrize("case", sorted(POLICIES))
def test_golden_lr_schedule(case):
    spec = POLICIES[case]
    cfg = parse_config(["--config", os.path.join(ROOT, "config_rst", spec["config"]), *spec["cli_after_config"]])
    apply_free_imagenet(cfg)
    params = spec["params"]
    for key in ("lr_policy", "lr", "epochs", "warmup_length", "multistep", "multistep_lr_gamma",
                "multistep_lr_adjust", "n_repeats", "set"):
        assert getattr(cfg, key) == params[key], key
    assert (cfg.attack_type or "None") == params["attack_type"]
    optimizer = two_group_optimizer()
    set_lr = get_policy(optimizer, cfg)
    got = []
    for epoch in range(cfg.epochs):
        lr = set_lr(epoch, iteration=None)
        assert [g["lr"] for g in optimizer.param_groups] == [lr, lr]
        got.append(lr)
    assert got == spec["lr_per_epoch"]  # exact floats


def test_free_imagenet_rewrite_is_main_py_only_and_imagenet_only():
    cifar = parse_config(["--config", os.path.join(ROOT, "config_rst", "resnet18-usc-unsigned-cifar.yaml"),
                          "--attack_type", "free", "--epochs", "90"])
    apply_free_imagenet(cifar)
    assert (cifar.epochs, cifar.lr_policy) == (90, "cifar_piecewise")
    imagenet = parse_config(["--config", os.path.join(ROOT, "config_rst", "resnet50-usc-unsigned-imagenet.yaml"),
                             "--attack_type", "free", "--epochs", "90", "--n_repeats", "8"])
    apply_free_imagenet(imagenet)
    assert (imagenet.epochs, imagenet.lr_policy) == (12, "multistep_lr_imagenet_free")  # ceil(90 / 8)


@pytest.mark.parametrize("case", VALIDATION, ids=lambda c: f"{c['epochs']}e-every{c['val_every']}")
def test_golden_validation_epochs(case):
    epochs, every = case["epochs"], case["val_every"]
    assert [e for e in range(epochs) if should_validate(e, epochs, every)] == case["main.py"]
    assert [e for e in range(epochs) if should_validate(e, epochs, every, train_full=True)] == case["train_full.py"]
