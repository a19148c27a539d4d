"""Datasets and loaders.

``build_dataset(cfg)`` returns a :class:`DataBundle` (info, train, val) for the
dataset named by ``--set``; ``make_loader`` wraps one split for one rank and
epoch; ``subset`` limits evaluation to the first n examples. Importing this
package only registers the datasets into ``DATASETS``.
"""
from data import datasets as _datasets  # noqa: F401  (registers the torchvision and folder sets)
from data import digits as _digits  # noqa: F401  (registers Digits)
from data.core import DATASETS, DataBundle, DatasetInfo, build_dataset, subset
from data.loader import make_loader

__all__ = ["DATASETS", "DataBundle", "DatasetInfo", "build_dataset", "make_loader", "subset"]
