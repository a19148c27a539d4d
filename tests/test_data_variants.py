"""SVHN and MNIST train without augmentation (as in the original); BigCIFAR10 (CIFAR-10 at
128 px). Each test writes a tiny fake copy of the dataset's files itself."""
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision

from data import DATASETS, DatasetInfo, build_dataset
from data.datasets import IMAGENET_MEAN, IMAGENET_STD
from utils.config import parse_config

N = 4  # examples per split


def images(n, h, w, c, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def assert_plain_tensors(split, pixels):
    """Every draw of every example is exactly ToTensor of its pixels: no crop, no flip."""
    for seed in range(3):
        torch.manual_seed(seed)
        for i in range(len(split)):
            x, _ = split[i]
            expected = torch.from_numpy(pixels[i]).permute(2, 0, 1).float() / 255
            assert torch.equal(x, expected)


def write_mnist(root):
    raw = root / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        pix = images(N, 28, 28, 1, seed=len(split))
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 0x0803, N, 28, 28) + pix.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 0x0801, N) + bytes(range(N)))
        out[split] = pix
    return out


def test_mnist_trains_without_augmentation(tmp_path):
    pixels = write_mnist(tmp_path)
    b = build_dataset(parse_config(["--set", "MNIST", "--data", str(tmp_path)]))
    assert b.info == DatasetInfo("MNIST", 10, 1, 28, (0.1307,), (0.3081,))
    assert_plain_tensors(b.train, pixels["train"])
    assert_plain_tensors(b.val, pixels["test"])
    assert [b.train[i][1] for i in range(N)] == list(range(N))


def test_svhn_trains_without_augmentation(tmp_path, monkeypatch):
    from scipy.io import savemat
    folder = tmp_path / "svhn"
    folder.mkdir()
    pixels = {}
    for split in ("train", "test"):
        pix = images(N, 32, 32, 3, seed=len(split))
        savemat(folder / f"{split}_32x32.mat", {"X": pix.transpose(1, 2, 3, 0), "y": np.arange(1, N + 1)[:, None]})
        pixels[split] = pix
    monkeypatch.setattr(torchvision.datasets.SVHN, "_check_integrity", lambda self: True)  # no md5 of fakes
    b = build_dataset(parse_config(["--set", "SVHN", "--data", str(tmp_path)]))
    assert b.info == DatasetInfo("SVHN", 10, 3, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert_plain_tensors(b.train, pixels["train"])
    assert_plain_tensors(b.val, pixels["test"])


@pytest.fixture()
def fake_cifar10(tmp_path, monkeypatch):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for j, name in enumerate(files):
        pix = images(2, 32, 32, 3, seed=j)
        pix[0] = 200  # a uniform image: its validation view is uniform at any size
        data = pix.transpose(0, 3, 1, 2).reshape(2, -1)
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": [j % 10, (j + 1) % 10]}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)  # no md5 of fakes
    return tmp_path


def test_big_cifar10_is_cifar10_at_128_pixels(fake_cifar10):
    b = build_dataset(parse_config(["--set", "BigCIFAR10", "--data", str(fake_cifar10)]))
    assert b.info == DatasetInfo("BigCIFAR10", 10, 3, 128, IMAGENET_MEAN, IMAGENET_STD)
    assert (len(b.train), len(b.val)) == (10, 2)
    small = build_dataset(parse_config(["--set", "CIFAR10", "--data", str(fake_cifar10)]))
    assert [b.train[i][1] for i in range(10)] == [small.train[i][1] for i in range(10)]
    x, y = b.val[0]
    assert x.shape == (3, 128, 128) and y == 5
    assert torch.allclose(x, torch.full_like(x, 200 / 255))  # resize + centre crop of a uniform image
    assert torch.equal(b.val[1][0], b.val[1][0])  # validation is deterministic
    torch.manual_seed(0)
    draws = [b.train[1][0] for _ in range(4)]
    assert all(d.shape == (3, 128, 128) and 0 <= d.min() and d.max() <= 1 for d in draws)
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # random resized crops and flips
    assert "BigCIFAR10" in DATASETS.names()
