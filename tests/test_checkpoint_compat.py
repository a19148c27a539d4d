"""Checkpoints of the original implementation (DataParallel 'module.' keys) load and predict the same."""
import logging

import pytest
import torch

from trainers.tasks import load_pretrained
from utils.checkpoint import atomic_save, extract_state_dict, load_model_state
from utils.errors import UserError
from tests.helpers import tiny_cfg, tiny_model


def original_checkpoint(model, arch="cResNet18"):
    """The dict the original's save_checkpoint wrote from a DataParallel model."""
    return {"epoch": 7, "arch": arch, "best_acc1": 41.0, "best_acc5": 90.0, "best_train_acc1": 50.0,
            "best_train_acc5": 95.0, "curr_acc1": 40.0, "curr_acc5": 89.0, "optimizer": {},
            "state_dict": {f"module.{k}": v.clone() for k, v in model.state_dict().items()}}


@pytest.mark.parametrize("suffix", [".pth", ".state"])
def test_original_layout_gives_identical_logits(tmp_path, suffix):
    source = tiny_model(seed=1).eval()
    with torch.no_grad():
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"ticket{suffix}"
    torch.save(original_checkpoint(source), path)
    target = tiny_model(seed=2).eval()
    x = torch.rand(4, 3, 32, 32)
    assert not torch.allclose(source(x), target(x))
    load_pretrained(target, str(path), tiny_cfg())
    assert torch.equal(source(x), target(x))
    assert set(target.state_dict()) == {k[len("module."):] for k in original_checkpoint(source)["state_dict"]}


def test_our_checkpoints_use_bare_keys(tmp_path):
    model = tiny_model()
    atomic_save({"state_dict": model.state_dict(), "arch": "cResNet18"}, tmp_path / "a.pth")
    saved = torch.load(tmp_path / "a.pth", weights_only=True)["state_dict"]
    assert not any(k.startswith("module.") for k in saved)
    assert list(tmp_path.iterdir()) == [tmp_path / "a.pth"], "no temporary file left behind"


def test_mismatch_is_an_error_unless_not_strict(tmp_path, caplog):
    small = tiny_model()
    state = extract_state_dict(original_checkpoint(small))
    state["extra.weight"] = torch.zeros(1)
    del state["fc.scores"]
    other = tiny_model(seed=3)
    with pytest.raises(UserError, match="--not_strict"):
        load_model_state(other, state, strict=True)
    before = other.fc.scores.clone()
    with caplog.at_level(logging.WARNING, logger="rst"):
        skipped = load_model_state(other, state, strict=False)
    assert set(skipped) == {"extra.weight", "fc.scores"}
    assert "extra.weight" in caplog.text and "fc.scores" in caplog.text
    assert torch.equal(other.fc.scores, before) and torch.equal(other.conv1.weight, small.conv1.weight)


def test_other_arch_or_classes_refused(tmp_path):
    path = tmp_path / "t.pth"
    torch.save(original_checkpoint(tiny_model(num_classes=100)), path)
    with pytest.raises(UserError, match="wrong shape"):
        load_pretrained(tiny_model(), str(path), tiny_cfg())
    torch.save(original_checkpoint(tiny_model(), arch="VGG16"), path)
    with pytest.raises(UserError, match="VGG16"):
        load_pretrained(tiny_model(), str(path), tiny_cfg())
