"""Checkpoints as the original writes them: numpy float64 learning rates in the optimizer
state (accepted by weights-only loading, nothing else from numpy is), and its optimizer
layout (BatchNorm group first, often empty) on --resume."""
import os

import numpy as np
import pytest
import torch

import main as main_entry
from models import build_model
from tests.helpers import run_cli
from trainers.loop import try_resume
from trainers.optim import build_optimizer
from trainers.tasks import set_trainable, setup_task
from utils.checkpoint import load_checkpoint, numpy_scalar_globals
from utils.config import parse_config
from utils.errors import UserError

TINY = ["--set", "Digits", "--arch", "cResNet18", "--width-mult", "0.125", "--prune-rate", "0.3", "--seed", "0",
        "--workers", "0", "-b", "64", "--low-data", "0.1", "--n_eval", "32", "--val_every", "1"]


def original_lr(epoch, epochs=160, lr=0.1):
    """The original's cifar_piecewise LR: a numpy float64, from np.interp."""
    return np.interp([epoch], [0, epochs // 2, epochs * 3 // 4, epochs], [lr, lr, lr / 10, lr / 100])[0]


def original_optimizer(model, bn_first=True):
    """The original's SGD: [BatchNorm params ('bn' in the name), the rest]; one step taken so
    every parameter has a momentum buffer; its LR policy leaves np.float64 in the groups."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    bn = [p for n, p in named if "bn" in n]
    rest = [p for n, p in named if "bn" not in n]
    opt = torch.optim.SGD([{"params": bn, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 5e-4}],
                          lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    torch.nn.functional.cross_entropy(model(torch.rand(4, 3, 32, 32)), torch.arange(4)).backward()
    opt.step()
    for g in opt.param_groups:
        g["lr"] = original_lr(3)
    assert isinstance(opt.param_groups[0]["lr"], np.float64)
    return opt


def original_checkpoint(model, optimizer, epoch=1):
    """The dict the original's save_checkpoint writes (DataParallel keys, no config)."""
    return {"epoch": epoch, "arch": "cResNet18", "best_acc1": 30.0, "best_acc5": 80.0, "best_train_acc1": 20.0,
            "best_train_acc5": 70.0, "natural_acc1_at_best_robustness": None, "curr_acc1": 30.0, "curr_acc5": 80.0,
            "optimizer": optimizer.state_dict(),
            "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}


def searched_model(*extra):
    cfg = parse_config(TINY + list(extra))
    torch.manual_seed(0)
    model = build_model(cfg, 10)
    setup_task(model, cfg, "unused")
    return cfg, model


def numpy1_legacy_file(obj, path):
    """A checkpoint as numpy 1.x pickles it: the scalar reconstructor under numpy.core."""
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    new_name, old_name = b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"
    assert new_name in data
    path.write_bytes(data.replace(new_name, old_name))


def test_numpy_scalars_load_under_both_numpy_names_and_nothing_leaks(tmp_path):
    _, model = searched_model()
    ckpt = original_checkpoint(model, original_optimizer(model))
    before = set(torch.serialization.get_safe_globals())
    zipped, legacy = tmp_path / "model_best.pth", tmp_path / "legacy.state"
    torch.save(ckpt, zipped)
    numpy1_legacy_file(ckpt, legacy)
    for path in (zipped, legacy):
        out = load_checkpoint(str(path))
        lr = out["optimizer"]["param_groups"][1]["lr"]
        assert isinstance(lr, np.float64) and lr == original_lr(3)
    assert set(torch.serialization.get_safe_globals()) == before, "the allowlist is scoped to our load"
    with pytest.raises(Exception, match="numpy"):
        torch.load(zipped, weights_only=True)  # torch alone still refuses it


def test_other_numpy_globals_stay_refused(tmp_path):
    path = tmp_path / "array.pth"
    torch.save({"state_dict": {}, "extra": np.zeros(3)}, path)  # ndarray: _reconstruct, not a scalar
    with pytest.raises(UserError, match=r"refused: loading it would run code \(numpy\._core\.multiarray\._reconstruct"):
        load_checkpoint(str(path))
    path = tmp_path / "int.pth"
    torch.save({"epoch": np.int64(1)}, path)
    assert load_checkpoint(str(path))["epoch"] == 1  # an int64 scalar: allowed
    allowed = {getattr(g, "__name__", str(g)) for g in numpy_scalar_globals() if not isinstance(g, tuple)}
    assert "ObjectDType" not in allowed and "VoidDType" not in allowed and "StrDType" not in allowed


def test_cli_evaluates_an_original_checkpoint(tmp_path):
    _, model = searched_model()
    path = tmp_path / "model_best.pth"
    torch.save(original_checkpoint(model, original_optimizer(model)), path)
    proc = run_cli("main.py", *TINY, "--log-dir", tmp_path / "runs", "--evaluate", "--pretrained", path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-2].startswith("Natural Acc: ")  # then the JSON line


def test_original_optimizer_layout_maps_each_buffer_to_its_parameter(tmp_path):
    """LearnedBatchNorm and trainable weights: the original's BN group (first) is not empty."""
    cfg = parse_config(TINY + ["--bn-type", "LearnedBatchNorm", "--task", "ft_inherit"])
    torch.manual_seed(0)
    model = build_model(cfg, 10)
    set_trainable(model, weights=True, scores=False)
    original = original_optimizer(model)
    names = {id(p): n for n, p in model.named_parameters()}
    expected = {names[id(p)]: s["momentum_buffer"].clone() for p, s in original.state.items()}
    assert any("bn" in n for n in expected) and len(original.param_groups[0]["params"]) > 0
    ckpt = original_checkpoint(model, original, epoch=4)
    ours = build_optimizer(cfg, model)
    state = try_resume(cfg, ("orig.pth", ckpt), model, ours, {})
    assert state.epoch == 4 and state.best_acc1 == 30.0
    got = {names[id(p)]: s["momentum_buffer"] for p, s in ours.state.items()}
    assert set(got) == set(expected)
    assert all(torch.equal(got[n], expected[n]) for n in expected)
    assert all(isinstance(g["lr"], float) and not isinstance(g["lr"], np.float64) for g in ours.param_groups)
    ckpt["optimizer"]["state"][0]["momentum_buffer"] = torch.zeros(7)
    with pytest.raises(UserError, match="another model"):
        try_resume(cfg, ("orig.pth", ckpt), model, build_optimizer(cfg, model), {})


def test_resume_of_an_original_search_checkpoint_with_empty_bn_group(tmp_path):
    _, model = searched_model()
    original = original_optimizer(model)
    assert original.param_groups[0]["params"] == []  # NonAffineBatchNorm: nothing named bn trains
    path = tmp_path / "epoch_0.state"
    torch.save(original_checkpoint(model, original, epoch=1), path)
    out = main_entry.main(TINY + ["--epochs", "2", "--resume", str(path), "--log-dir", str(tmp_path)])
    assert out["epochs_done"] == 2
    assert os.path.isfile(tmp_path / "no_config" / "default" / "prune_rate=0.3" / "search" / "width_mult=0.125" /
                          "checkpoints" / "model_latest.pth")
