"""Shared pieces of the data package: result types, the registry and helpers.

Datasets yield ``(float tensor CxHxW in [0, 1], int label)``; they are never
normalised here because the model normalises its own input (attacks work in
[0, 1] pixel space, so the loader must hand out raw pixels).
"""
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Subset

from utils.errors import UserError
from utils.registry import Registry

DATASETS = Registry("dataset")

# Fixed seed of the permutation behind --low-data: independent of --seed so that
# runs with different seeds train on the same examples.
LOW_DATA_SEED = 0


@dataclass
class DatasetInfo:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple
    std: tuple


@dataclass
class DataBundle:
    info: DatasetInfo
    train: Dataset
    val: Dataset


def build_dataset(cfg):
    """Build the dataset named by ``cfg.set``; applies ``cfg.low_data`` to train."""
    bundle = DATASETS.get(cfg.set)(cfg)
    bundle.train = low_data(bundle.train, getattr(cfg, "low_data", 1.0))
    return bundle


def low_data(dataset, fraction):
    """Keep ``fraction`` of ``dataset``: the first part of a fixed permutation."""
    if fraction is None or fraction == 1.0:
        return dataset
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"--low-data must be a fraction in (0, 1], got {fraction}")
    n = max(1, int(len(dataset) * fraction))
    gen = torch.Generator().manual_seed(LOW_DATA_SEED)
    keep = torch.randperm(len(dataset), generator=gen)[:n]
    return Subset(dataset, keep.tolist())


def subset(dataset, n):
    """The first ``n`` examples of ``dataset`` (``--n_eval``); None keeps all."""
    if n is None:
        return dataset
    if n <= 0:
        raise UserError(f"--n_eval must be a positive number of examples, got {n}")
    if n >= len(dataset):
        return dataset
    return Subset(dataset, range(n))


def one_line(exc):
    """First line of an exception message, for a one-line UserError."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
