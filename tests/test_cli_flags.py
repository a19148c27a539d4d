"""The command line: one parser per entry point, help groups with defaults, both spellings of every
flag, "did you mean", --device, range checks before anything is written, k from the checkpoint."""
import os

import pytest
import torch

from utils.config import build_parser, long_options, normalize_spellings, parse_config, spelling_key
from utils.distributed import DistContext, select_device
from utils.errors import UserError

GROUPS = ("model:", "data:", "optimisation:", "attack:", "evaluation:", "runs:", "distributed:")


@pytest.mark.parametrize("prog,has,lacks", [
    ("main.py", ["--task", "--ft_full_mode", "--prune-rate", "--epochs", "--device"], ["--r2s", "--eot_samples"]),
    ("train_full.py", ["--epochs", "--attack_type", "--multigpu"], ["--task", "--r2s", "--ft_full_mode"]),
    ("test_trans.py", ["--r2s", "--all_sources", "--pretrained", "--eot_samples"],
     ["--ft_full_mode", "--epochs", "--lr", "--task"]),
    ("scripts/demo.py", ["--epochs", "--log-dir"], ["--task", "--r2s"]),
])
def test_each_entry_point_lists_only_its_flags_in_groups_with_defaults(prog, has, lacks):
    text = build_parser(prog).format_help()
    assert text.startswith(f"usage: {os.path.basename(prog)} ")
    assert all(f" {flag} " in text or f" {flag}\n" in text for flag in has), prog
    assert not any(flag in text for flag in lacks), prog
    assert all(g in text for g in GROUPS if not (prog == "test_trans.py" and g == "optimisation:"))
    assert "(default: 256)" in text  # -b: defaults are shown


def test_every_flag_takes_both_spellings():
    parser = build_parser()
    for key, option in long_options(parser).items():
        for spelling in ("--" + key, "--" + key.replace("-", "_")):
            assert normalize_spellings(parser, [spelling + "=1"]) == [option + "=1"], spelling
    cfg = parse_config(["--batch-size", "8", "--prune_rate", "0.2", "--width_mult", "0.5", "--learning_rate", "0.3",
                        "--weight_decay", "0", "--log_dir", "x", "--print_freq", "5", "--attack-type", "pgd"])
    assert (cfg.batch_size, cfg.prune_rate, cfg.width_mult, cfg.lr, cfg.weight_decay) == (8, 0.2, 0.5, 0.3, 0.0)
    assert (cfg.log_dir, cfg.print_freq, cfg.attack_type) == ("x", 5, "pgd")
    assert {"batch_size", "prune_rate", "width_mult", "lr", "weight_decay"} <= set(cfg.given)


def test_a_flag_given_in_another_spelling_beats_the_preset(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("prune_rate: -1\nbatch_size: 32\n")
    cfg = parse_config(["--config", str(preset), "--prune_rate", "0.2", "--batch-size", "16"], prog="main.py")
    assert (cfg.prune_rate, cfg.batch_size) == (0.2, 16)


@pytest.mark.parametrize("argv,prog,message", [
    (["--prune-ratee", "0.1"], "main.py", "unknown flag '--prune-ratee'; did you mean '--prune-rate'?"),
    (["--batchsize", "8"], "main.py", "did you mean '--batch_size'?"),
    (["--r2s"], "main.py", "--r2s would be ignored: it is a test_trans.py flag (main.py does not take it)"),
    (["--epochs", "3"], "test_trans.py", "--epochs would be ignored: it is a main.py / train_full.py flag"),
    (["--task", "search"], "demo.py", "--task would be ignored: it is a main.py flag (demo.py does not take it)"),
])
def test_unknown_flags_get_a_suggestion(argv, prog, message):
    with pytest.raises(UserError) as exc:
        parse_config(argv, prog=prog)
    assert message in str(exc.value)


@pytest.mark.parametrize("argv,message", [
    (["--width-mult", "-1"], "--width-mult must be > 0, got -1"),
    (["--width-mult", "nan"], "--width-mult must be > 0, got nan"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--prune-rate", "1.5"], "--prune-rate (fraction of weights kept) must be in (0, 1], got 1.5"),
    (["-b", "0"], "--batch_size must be at least 1, got 0"),
    (["--test_batch_size", "0"], "--test_batch_size must be at least 1"),
    (["--low-data", "0"], "--low-data is a fraction of the training set, in (0, 1], got 0"),
    (["--momentum", "1"], "--momentum must be in [0, 1), got 1"),
    (["--lr", "-0.1"], "--lr must be >= 0, got -0.1"),
    (["--workers", "-2"], "--workers must be >= 0, got -2"),
    (["--val_every", "-1"], "--val_every must be >= 0"),
    (["--attack_iters", "0"], "--attack_iters must be at least 1"),
    (["--once_for_all_list", "0.5", "2"], "--once_for_all_list holds kept fractions, each in (0, 1], got 2"),
    (["--scale-fan", "--scale-fan-kept"], "--scale-fan (the original's fan*(1-k)) and --scale-fan-kept"),
    (["--device", "gpu"], "expected cpu, cuda or cuda:N, got 'gpu'"),
])
def test_out_of_range_values_are_errors_naming_the_flag(argv, message):
    with pytest.raises(UserError) as exc:
        parse_config(argv, prog="main.py")
    assert message in str(exc.value)


def test_yaml_values_are_checked_too(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("width_mult: 0\n")
    with pytest.raises(UserError, match="--width-mult must be > 0, got 0"):
        parse_config(["--config", str(preset)])


def test_bad_value_and_missing_k_write_nothing(tmp_path):
    import main as main_entry
    base = ["--set", "Digits", "--epochs", "1", "--workers", "0", "--log-dir", str(tmp_path / "runs")]
    with pytest.raises(UserError, match="--width-mult must be > 0"):
        main_entry.main(base + ["--width-mult", "-1", "--prune-rate", "0.1"])
    with pytest.raises(UserError) as exc:  # the original's default k (0.0) was reported as "got 0.0"
        main_entry.main(base + ["--width-mult", "0.125"])
    assert str(exc.value).startswith("--prune-rate is required") and "got 0" not in str(exc.value)
    assert not (tmp_path / "runs").exists()


def test_device_flag():
    cfg = parse_config(["--device", "cpu", "--multigpu", "0"])
    assert cfg.device == "cpu" and select_device(cfg, DistContext()) == torch.device("cpu")
    assert parse_config(["--device", "cuda:1"]).device == "cuda:1"
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            select_device(parse_config(["--device", "cuda"]), DistContext())


def test_spelling_key():
    assert spelling_key("--prune_rate") == spelling_key("--prune-rate") == "prune-rate"
