"""cResNet18's state_dict layout matches the original (SPEC section 4), so its
checkpoints can load; normalisation constants are not saved."""
import pytest
import torch

import models
from utils.config import parse_config


@pytest.fixture(scope="module")
def state():
    cfg = parse_config(["--arch", "cResNet18", "--prune-rate", "0.1", "--width-mult", "1.0"])
    model = models.build_model(cfg, num_classes=10, in_channels=3, image_size=32,
                               mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))
    return model.state_dict()


def expected_keys():
    """The full key list, written out from the SPEC's description."""
    conv = ("weight", "scores")
    bn = ("running_mean", "running_var", "num_batches_tracked")
    keys = [f"conv1.{s}" for s in conv] + [f"bn1.{s}" for s in bn]
    for layer in range(1, 5):
        for block in range(2):
            prefix = f"layer{layer}.{block}"
            for i in (1, 2):
                keys += [f"{prefix}.conv{i}.{s}" for s in conv]
                keys += [f"{prefix}.bn{i}.{s}" for s in bn]
            if layer > 1 and block == 0:
                keys += [f"{prefix}.shortcut.0.{s}" for s in conv]
                keys += [f"{prefix}.shortcut.1.{s}" for s in bn]
    keys += [f"fc.{s}" for s in conv]
    return keys


def test_key_count(state):
    assert len(state) == 102


def test_key_names(state):
    assert sorted(state) == sorted(expected_keys())
    for key in ("conv1.weight", "conv1.scores", "bn1.running_mean", "layer2.0.shortcut.0.weight",
                "layer2.0.shortcut.1.running_var", "fc.weight", "fc.scores"):
        assert key in state


def test_shapes(state):
    assert state["fc.weight"].shape == torch.Size([10, 512, 1, 1])
    assert state["fc.scores"].shape == torch.Size([10, 512, 1, 1])
    assert state["conv1.weight"].shape == torch.Size([64, 3, 3, 3])
    assert state["layer4.0.shortcut.0.weight"].shape == torch.Size([512, 256, 1, 1])


def test_no_normalization_buffers(state):
    assert not any("normalize" in k or k.endswith(".mean") or k.endswith(".std") for k in state)
