"""Data package: datasets, split stability, errors, and loader determinism.

Fast and offline: only the bundled Digits set and tiny PNG trees are used.
"""
import os

import pytest
import torch
from PIL import Image

from data import DATASETS, DataBundle, DatasetInfo, build_dataset, make_loader, subset
from utils.config import parse_config
from utils.errors import UserError


def cfg_of(*argv):
    return parse_config(["--set", "Digits", *argv])


@pytest.fixture(scope="module")
def digits():
    return build_dataset(cfg_of())


def labels_of(dataset):
    return torch.tensor([dataset[i][1] for i in range(len(dataset))])


def loader_indices(loader):
    return list(iter(loader.sampler))


# ---------------------------------------------------------------- Digits

def test_digits_sizes_shapes_and_info(digits):
    assert isinstance(digits, DataBundle)
    assert (len(digits.train), len(digits.val)) == (1437, 360)
    assert digits.info == DatasetInfo("Digits", 10, 3, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    for split in (digits.train, digits.val):
        x, y = split[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert isinstance(y, int)
        assert set(labels_of(split).tolist()) == set(range(10))


def test_digits_values_in_unit_range_and_not_blank(digits):
    images = torch.stack([digits.val[i][0] for i in range(len(digits.val))])
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert images.max() > 0.9  # really scaled from 0-16, not left near 0
    assert torch.equal(images[:, 0], images[:, 2])  # grey repeated to 3 channels


def test_digits_split_fixed_and_independent_of_seed(digits):
    other = build_dataset(cfg_of("--seed", "123"))
    assert torch.equal(labels_of(other.val), labels_of(digits.val))
    assert torch.equal(other.val.images, digits.val.images)
    assert torch.equal(other.train.images, digits.train.images)


def test_digits_train_augmentation_repeatable_under_global_seed(digits):
    def draw():
        torch.manual_seed(7)
        return torch.stack([digits.train[0][0] for _ in range(8)])

    a, b = draw(), draw()
    assert torch.equal(a, b)
    assert any(not torch.equal(a[0], a[i]) for i in range(1, 8))  # it does translate
    assert torch.equal(digits.val[0][0], digits.val[0][0])  # val is not augmented


# ---------------------------------------------------------------- ImageFolder

def write_tree(root, classes=("cat", "dog"), per_class=3):
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                size = (10 + 7 * i, 20 + 3 * c)  # different sizes: resize must unify them
                Image.new("RGB", size, (40 * i, 100 * c, 200)).save(folder / f"{i}.png")


def test_image_folder_shapes_classes_and_stats(tmp_path):
    write_tree(tmp_path)
    cfg = parse_config(["--set", "ImageFolder", "--data", str(tmp_path), "--image_size", "16",
                        "--mean", "0.1,0.2,0.3", "--std", "0.4,0.5,0.6"])
    b = build_dataset(cfg)
    assert b.info == DatasetInfo("ImageFolder", 2, 3, 16, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert (len(b.train), len(b.val)) == (6, 6)
    for split in (b.train, b.val):
        for i in range(len(split)):
            x, y = split[i]
            assert x.shape == (3, 16, 16) and 0.0 <= x.min() and x.max() <= 1.0
            assert y in (0, 1)


def test_image_folder_defaults_and_bad_stats(tmp_path):
    write_tree(tmp_path)
    base = ["--set", "ImageFolder", "--data", str(tmp_path)]
    info = build_dataset(parse_config(base)).info
    assert info.mean == (0.5, 0.5, 0.5) and info.std == (0.5, 0.5, 0.5) and info.image_size == 32
    with pytest.raises(UserError, match="--mean needs 3"):
        build_dataset(parse_config(base + ["--mean", "0.5,0.5"]))


def test_image_folder_class_mismatch_is_user_error(tmp_path):
    write_tree(tmp_path)
    (tmp_path / "val" / "dog").rename(tmp_path / "val" / "bird")
    with pytest.raises(UserError, match="same folders"):
        build_dataset(parse_config(["--set", "ImageFolder", "--data", str(tmp_path)]))


def test_tiny_imagenet_official_val_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    write_tree(root, classes=("n01", "n02"), per_class=1)
    val = root / "val"
    for name in ("n01", "n02"):
        for f in (val / name).iterdir():
            f.unlink()
        (val / name).rmdir()
    (val / "images").mkdir()
    Image.new("RGB", (64, 64)).save(val / "images" / "val_0.JPEG")
    (val / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t10\t10\n")
    b = build_dataset(parse_config(["--set", "TinyImageNet", "--data", str(tmp_path)]))
    assert b.info.num_classes == 2 and b.info.image_size == 64
    x, y = b.val[0]
    assert x.shape == (3, 64, 64) and y == 1


# ---------------------------------------------------------------- errors

def test_missing_cifar10_is_one_line_error_without_download(tmp_path):
    data_root = tmp_path / "nowhere"
    with pytest.raises(UserError) as err:
        build_dataset(parse_config(["--set", "CIFAR10", "--data", str(data_root)]))
    msg = str(err.value)
    assert "\n" not in msg
    assert os.path.join(str(data_root), "cifar10") in msg and "--download" in msg
    assert not data_root.exists()


@pytest.mark.parametrize("name", ["ImageNet", "TinyImageNet", "ImageFolder", "SVHN", "MNIST", "CIFAR100"])
def test_other_missing_sets_name_the_path(tmp_path, name):
    with pytest.raises(UserError) as err:
        build_dataset(parse_config(["--set", name, "--data", str(tmp_path / "x")]))
    assert "\n" not in str(err.value) and str(tmp_path / "x") in str(err.value)
    assert not (tmp_path / "x").exists()


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UserError, match="Digits"):
        build_dataset(cfg_of("--set", "Cifar11"))
    assert {"CIFAR10", "CIFAR100", "BigCIFAR10", "SVHN", "MNIST", "ImageNet", "TinyImageNet", "Digits",
            "ImageFolder"} == set(DATASETS.names())


# ---------------------------------------------------------------- loaders

def test_loader_order_depends_only_on_seed_and_epoch(digits):
    cfg = cfg_of()
    a = loader_indices(make_loader(digits.train, 64, True, cfg, epoch=3, seed=5))
    b = loader_indices(make_loader(digits.train, 64, True, cfg, epoch=3, seed=5))
    c = loader_indices(make_loader(digits.train, 64, True, cfg, epoch=4, seed=5))
    d = loader_indices(make_loader(digits.train, 64, True, cfg, epoch=3, seed=6))
    assert a == b and a != c and a != d
    assert sorted(a) == list(range(len(digits.train)))
    val = loader_indices(make_loader(digits.val, 64, False, cfg, epoch=3, seed=5))
    assert val == list(range(len(digits.val)))  # evaluation is never shuffled


def test_loader_batches_and_workers(digits):
    loader = make_loader(digits.train, 100, True, cfg_of("-j", "4"))
    assert loader.num_workers == 0  # in-memory set
    sizes = [len(y) for _, y in loader]
    assert sizes[:-1] == [100] * 14 and sizes[-1] == 37  # drop_last False
    x, y = next(iter(loader))
    assert x.shape == (100, 3, 32, 32) and y.dtype == torch.int64


def test_two_ranks_cover_disjoint_halves(digits):
    ds = subset(digits.train, 100)
    cfg = cfg_of()
    parts = [loader_indices(make_loader(ds, 32, True, cfg, epoch=1, rank=r, world_size=2, seed=0))
             for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 50
    assert not set(parts[0]) & set(parts[1])
    assert set(parts[0]) | set(parts[1]) == set(range(100))
    assert make_loader(ds, 32, True, cfg, rank=1, world_size=2).batch_size == 16


def test_low_data_keeps_fixed_fraction():
    half = build_dataset(cfg_of("--low-data", "0.5"))
    again = build_dataset(cfg_of("--low-data", "0.5", "--seed", "9"))
    assert len(half.train) == 1437 // 2 and len(half.val) == 360
    assert half.train.indices == again.train.indices  # fixed, not tied to --seed
    assert len(set(half.train.indices)) == len(half.train.indices)
    with pytest.raises(UserError, match="low-data"):
        build_dataset(cfg_of("--low-data", "1.5"))


def test_one_batch_yields_exactly_one_batch(digits):
    cfg = cfg_of("--one-batch")
    batches = list(make_loader(digits.train, 64, True, cfg, epoch=2))
    assert len(batches) == 1 and len(batches[0][1]) == 64
    per_rank = [list(make_loader(digits.train, 64, True, cfg, rank=r, world_size=2)) for r in (0, 1)]
    assert all(len(b) == 1 and len(b[0][1]) == 32 for b in per_rank)
    assert len(list(make_loader(digits.val, 64, False, cfg))) == 6  # eval is not cut


def test_subset_first_n(digits):
    assert subset(digits.val, None) is digits.val
    s = subset(digits.val, 10)
    assert len(s) == 10 and torch.equal(s[3][0], digits.val[3][0])
    assert len(subset(digits.val, 10_000)) == 360


def test_digits_native_resolution_and_scaled_shift():
    from types import SimpleNamespace
    from data.digits import build_digits
    from utils.errors import UserError

    native, default = build_digits(SimpleNamespace(image_size=8)), build_digits(SimpleNamespace(image_size=32))
    assert native.info.image_size == 8 and native.val[0][0].shape == (3, 8, 8)
    assert default.val[0][0].shape == (3, 32, 32)
    assert native.train.shift == 0 and default.train.shift == 2  # half a native pixel at any size
    assert len(native.train) == len(default.train) and native.val.labels.tolist() == default.val.labels.tolist()
    with pytest.raises(UserError):
        build_digits(SimpleNamespace(image_size=4))
