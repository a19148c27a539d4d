"""Config precedence (default < YAML < CLI in any spelling), presets, errors."""
import glob
import os

import pytest

from utils.config import build_parser, parse_config
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = sorted(glob.glob(os.path.join(ROOT, "config_rst", "*.y*ml")))


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_defaults_match_the_original():
    cfg = parse_config([])
    assert (cfg.workers, cfg.epochs, cfg.batch_size, cfg.test_batch_size) == (20, 160, 256, 128)
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.warmup_length) == (0.1, 0.9, 1e-4, 0)
    assert (cfg.lr_policy, cfg.multistep_lr_adjust, cfg.multistep_lr_gamma) == ("cifar_piecewise", 30, 0.1)
    assert (cfg.epsilon, cfg.alpha, cfg.attack_iters, cfg.attack_type) == (8, 10, 7, None)
    assert (cfg.val_every, cfg.n_repeats, cfg.discard_epoch, cfg.discard_rate) == (3, 4, 10, 0.1)
    assert (cfg.init, cfg.mode, cfg.nonlinearity, cfg.ft_init) == ("kaiming_normal", "fan_in", "relu",
                                                                  "kaiming_normal")
    assert (cfg.weight_decay_on_zero, cfg.lr_scale_zero, cfg.print_freq) == (1e-3, 0.1, 10)
    assert isinstance(cfg.multistep_lr_gamma, float)


@pytest.mark.parametrize("argv,key,value", [
    (["--wd", "0.01"], "weight_decay", 0.01),
    (["--weight-decay", "0.01"], "weight_decay", 0.01),
    (["--weight-decay=0.01"], "weight_decay", 0.01),
    (["-b", "64"], "batch_size", 64),
    (["--batch_size", "64"], "batch_size", 64),
    (["--prune-rate", "0.05"], "prune_rate", 0.05),
    (["--learning-rate", "0.5"], "lr", 0.5),
    (["--score-init-constant", "-0.5"], "score_init_constant", -0.5),
    (["--score_init_constant", "-1e-3"], "score_init_constant", -1e-3),
])
def test_cli_beats_yaml_beats_default(tmp_path, argv, key, value):
    path = write(tmp_path, "weight_decay: 5e-4\nbatch_size: 32\nprune_rate: 0.3\nlr: 0.2\n")
    yaml_only = parse_config(["--config", path])
    assert (yaml_only.weight_decay, yaml_only.batch_size, yaml_only.prune_rate, yaml_only.lr) == (5e-4, 32, 0.3, 0.2)
    assert parse_config([]).weight_decay == 1e-4
    cfg = parse_config(["--config", path] + argv)
    assert getattr(cfg, key) == value
    assert key in cfg.given


def test_flag_equal_to_default_still_beats_yaml(tmp_path):
    path = write(tmp_path, "epochs: 5\n")
    assert parse_config(["--config", path, "--epochs", "160"]).epochs == 160


def test_test_batch_size_follows_batch_size(tmp_path):
    assert parse_config(["-b", "64"]).test_batch_size == 32
    assert parse_config(["--config", write(tmp_path, "batch_size: 10\n")]).test_batch_size == 5


def test_unknown_yaml_key_names_key_file_and_closest(tmp_path):
    path = write(tmp_path, "prune_rat: 0.1\n")
    with pytest.raises(UserError) as exc:
        parse_config(["--config", path])
    msg = str(exc.value)
    assert "prune_rat" in msg and path in msg and "prune_rate" in msg and "\n" not in msg


def test_yaml_value_of_wrong_type_is_an_error(tmp_path):
    with pytest.raises(UserError, match="epochs"):
        parse_config(["--config", write(tmp_path, "epochs: many\n")])


def test_yaml_none_attack_type(tmp_path):
    assert parse_config(["--config", write(tmp_path, "attack_type: None\n")]).attack_type is None
    assert parse_config(["--attack_type", "None"]).attack_type is None
    assert parse_config(["--attack_type", "pgd"]).attack_type == "pgd"


def test_bad_flag_value_is_one_line_user_error():
    with pytest.raises(UserError) as exc:
        parse_config(["--epochs", "x"])
    assert "--epochs" in str(exc.value) and "\n" not in str(exc.value)


def test_multigpu_list():
    assert parse_config(["--multigpu", "0,1"]).multigpu == [0, 1]


@pytest.mark.parametrize("path", PRESETS, ids=os.path.basename)
def test_every_preset_parses(path):
    cfg = parse_config(["--config", path])
    assert cfg.conv_type == "SubnetConv" and cfg.freeze_weights
    if os.path.basename(path).startswith("demo"):
        assert 0 < cfg.prune_rate <= 1 and cfg.set == "Digits"
    else:
        assert cfg.prune_rate == -1, "table presets force the user to pass --prune-rate"


def test_all_presets_present():
    names = {os.path.basename(p) for p in PRESETS}
    expected = {"conv2_usc_unsigned.yml", "conv4_usc_unsigned.yml", "conv6_usc_unsigned.yml",
                "mbv2-usc-unsigned-cifar.yaml", "vgg16-usc-unsigned-cifar.yaml",
                "wideresnet32-usc-unsigned-cifar.yaml", "resnet101-usc-unsigned-imagenet.yaml"}
    expected |= {f"resnet18-{v}-unsigned-cifar.yaml" for v in ("usc", "ukn", "ku", "xn")}
    expected |= {f"resnet{d}-{v}-unsigned-imagenet.yaml" for d in (18, 34, 50) for v in ("usc", "ukn")}
    assert expected <= names


def test_imagenet_preset_values():
    cfg = parse_config(["--config", os.path.join(ROOT, "config_rst", "resnet50-ukn-unsigned-imagenet.yaml")])
    assert (cfg.arch, cfg.lr, cfg.lr_policy, cfg.weight_decay) == ("ResNet50", 0.256, "cosine_lr", 3.0517578125e-5)
    assert (cfg.label_smoothing, cfg.momentum, cfg.warmup_length, cfg.init) == (0.1, 0.875, 5, "kaiming_normal")


def test_help_describes_k_as_kept():
    text = build_parser("main.py").format_help()
    assert "KEPT" in text and "--prune-rate" in text and "--ft_full_mode" in text


def test_negative_values_for_short_flags():
    with pytest.raises(UserError, match=r"--batch_size must be at least 1, got -5"):  # -5 parsed as -b's value
        parse_config(["-b", "-5"])
    assert parse_config(["--epsilon", "-2e0"]).epsilon == -2.0
