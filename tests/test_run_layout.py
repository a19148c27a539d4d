"""Run directories as the original names them; presets' name; best_acc5; --mean/--std spelling."""
import os

import pytest

from tests.helpers import ROOT
from trainers.state import TrainState
from trainers.tasks import find_search_checkpoint
from utils.config import parse_config
from utils.run_dir import run_dir_for

PRESETS = os.path.join(ROOT, "config_rst")
# The original's presets that carry `name: baseline` (its ImageNet presets have no name).
BASELINE_PRESETS = ["resnet18-usc-unsigned-cifar", "resnet18-ukn-unsigned-cifar", "resnet18-ku-unsigned-cifar",
                    "resnet18-xn-unsigned-cifar", "vgg16-usc-unsigned-cifar", "wideresnet32-usc-unsigned-cifar",
                    "mbv2-usc-unsigned-cifar"]


def preset(name):
    return os.path.join(PRESETS, f"{name}.yaml")


@pytest.mark.parametrize("argv, task, expected", [
    (["--config", preset("resnet18-usc-unsigned-cifar"), "--prune-rate", "0.1", "--name", "exp_name"], None,
     "runs/resnet18-usc-unsigned-cifar/exp_name/prune_rate=0.1/search"),
    (["--config", preset("resnet18-usc-unsigned-cifar"), "--prune-rate", "0.1", "--width-mult", "0.5",
      "--task", "ft_inherit", "--log-dir", "out"], None,
     "out/resnet18-usc-unsigned-cifar/baseline/prune_rate=0.1/ft_inherit/width_mult=0.5"),
    (["--prune-rate", "0.05", "--width-mult", "2"], "transfer",
     "runs/no_config/default/prune_rate=0.05/transfer/width_mult=2.0"),
    (["--prune-rate", "1e-1", "--width-mult", "1"], None, "runs/no_config/default/prune_rate=0.1/search"),
])
def test_run_dir_is_the_originals(argv, task, expected):
    assert run_dir_for(parse_config(argv), task) == os.path.join(*expected.split("/"))


def test_train_full_runs_in_its_task_folder_at_k_one():
    """The original's train_full.py sets k = 1.0 and names the folder after --task (default search)."""
    cfg = parse_config(["--config", preset("resnet18-usc-unsigned-cifar"), "--name", "exp_name"])
    cfg.prune_rate = 1.0  # what train_full.py does before naming the run
    assert run_dir_for(cfg, "train_full") == os.path.join(
        "runs", "resnet18-usc-unsigned-cifar", "exp_name", "prune_rate=1.0", "search")
    cfg.task = "ft_full"
    assert run_dir_for(cfg, "train_full").endswith(os.path.join("prune_rate=1.0", "ft_full"))


@pytest.mark.parametrize("name", BASELINE_PRESETS)
def test_presets_keep_the_originals_name(name):
    cfg = parse_config(["--config", preset(name), "--prune-rate", "0.1"])
    assert cfg.name == "baseline"
    assert parse_config(["--config", preset(name), "--name", "mine"]).name == "mine"


def test_imagenet_presets_have_no_name_and_fall_back_to_default():
    cfg = parse_config(["--config", preset("resnet50-ukn-unsigned-imagenet"), "--prune-rate", "0.1"])
    assert cfg.name is None
    assert run_dir_for(cfg).split(os.sep)[2] == "default"


def test_finetuning_finds_the_search_run_under_its_width_level(tmp_path):
    cfg = parse_config(["--prune-rate", "0.3", "--width-mult", "0.5", "--task", "ft_inherit",
                        "--log-dir", str(tmp_path), "--name", "w"])
    k_dir = tmp_path / "no_config" / "w" / "prune_rate=0.3"
    legacy = k_dir / "checkpoints" / "model_best.pth"  # the original's second place to look
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"x")
    assert find_search_checkpoint(cfg, run_dir_for(cfg)) == str(legacy)
    best = k_dir / "search" / "width_mult=0.5" / "checkpoints" / "model_best.pth"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"x")
    assert find_search_checkpoint(cfg, run_dir_for(cfg)) == str(best)  # the search run comes first


def test_best_acc5_is_the_running_maximum():
    state = TrainState()
    train = {"acc1": 10.0, "acc5": 50.0}
    assert state.record(0, train, {"acc1": 40.0, "acc5": 70.0}, None)
    assert not state.record(1, train, {"acc1": 30.0, "acc5": 90.0}, None)  # not best, higher top-5
    assert (state.best_acc1, state.best_acc5) == (40.0, 90.0)
    state.record(2, train, {"acc1": 20.0, "acc5": 95.0}, {"acc1": 50.0, "acc5": 60.0})  # robust decides
    assert (state.best_acc1, state.best_acc5) == (50.0, 90.0)


def test_best_rule_strict_and_first_zero_validation_is_kept():
    """docs/differences.md: strict ">" as the original; a first validation at 0% is the best
    (ours starts at -1, the original at 0.0 and then saves no model_best.pth)."""
    state, train = TrainState(), {"acc1": 0.0, "acc5": 0.0}
    assert state.record(0, train, {"acc1": 0.0, "acc5": 10.0}, None)
    assert not state.record(1, train, {"acc1": 0.0, "acc5": 10.0}, None)
    assert state.record(2, train, {"acc1": 5.0, "acc5": 10.0}, None)
    assert not state.record(3, train, {"acc1": 5.0, "acc5": 10.0}, None)  # a tie is not better


def test_conv_presets_name_their_runs_as_the_original():
    names = {p: parse_config(["--config", os.path.join(ROOT, "config_rst", p)]).name
             for p in ("conv2_usc_unsigned.yml", "conv4_usc_unsigned.yml", "conv6_usc_unsigned.yml",
                       "resnet18-usc-unsigned-cifar.yaml", "resnet50-usc-unsigned-imagenet.yaml")}
    assert names == {"conv2_usc_unsigned.yml": "conv2_usc_unsigned", "conv4_usc_unsigned.yml": "conv4_usc_unsigned",
                     "conv6_usc_unsigned.yml": "conv6_usc_unsigned", "resnet18-usc-unsigned-cifar.yaml": "baseline",
                     "resnet50-usc-unsigned-imagenet.yaml": None}


@pytest.mark.parametrize("argv", [["--mean", "0.49", "0.48", "0.45"], ["--mean", "0.49,0.48,0.45"],
                                  ["--mean", "0.49", "0.48,0.45"], ["--mean", "0.49 0.48 0.45"]])
def test_mean_and_std_take_spaces_or_commas(argv):
    cfg = parse_config(argv + ["--std", "0.2", "0.3", "0.4", "--epochs", "2"])
    assert cfg.mean == [0.49, 0.48, 0.45] and cfg.std == [0.2, 0.3, 0.4] and cfg.epochs == 2
    assert {"mean", "std", "epochs"} <= set(cfg.given)


def test_mean_from_yaml_as_list_or_string(tmp_path):
    for text in ("mean: [0.1, 0.2, 0.3]\n", "mean: 0.1,0.2,0.3\n", "mean: 0.1 0.2 0.3\n"):
        (tmp_path / "p.yaml").write_text(text)
        assert parse_config(["--config", str(tmp_path / "p.yaml")]).mean == [0.1, 0.2, 0.3]
