"""``--val_split F``: a seeded, stratified hold-out of the training set for model selection.

With it, the best epoch (``model_best.pth``, ``best_acc1``) is chosen on examples
the model never trains on, instead of on the test split that is reported (the
paper's protocol, still the default). The hold-out is the same for every
``--seed`` (a fixed generator, as for ``--low-data``), takes ``round(F * n_c)`` of
each class's n_c examples (at least one from a class with two or more), and is
served without training augmentation (the test split's transform), so selection
sees clean images as evaluation does.
"""
import copy
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Subset

from data.core import DataBundle

HOLDOUT_SEED = 0  # fixed: the hold-out does not depend on --seed


@dataclass
class SplitBundle(DataBundle):
    holdout: Dataset = None  # selection split (part of the original training set)


def labels_of(dataset):
    """Integer label of every example, read without loading images when the dataset keeps them."""
    if isinstance(dataset, Subset):
        parent = labels_of(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    for attr in ("targets", "labels"):
        values = getattr(dataset, attr, None)
        if values is not None and len(values) == len(dataset):
            return [int(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]
    samples = getattr(dataset, "samples", None)
    if samples is not None and len(samples) == len(dataset):
        return [int(s[1]) for s in samples]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def stratified_indices(labels, fraction, seed=HOLDOUT_SEED):
    """(kept, held_out) index lists: per class a seeded random ``fraction`` is held out."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels)
    held = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        n = int(round(fraction * len(members)))
        if len(members) >= 2:
            n = min(max(n, 1), len(members) - 1)
        held += members[:n].tolist()
    held = torch.tensor(held, dtype=torch.long)[torch.randperm(len(held), generator=gen)].tolist()
    chosen = set(held)
    return [i for i in range(len(labels)) if i not in chosen], held


def clean_view(train, val):
    """``train`` served like ``val``: the base dataset is copied with val's transform (and
    Digits' zero shift); Subset wrappers (``--low-data``) are kept."""
    if isinstance(train, Subset):
        return Subset(clean_view(train.dataset, val), train.indices)
    while isinstance(val, Subset):
        val = val.dataset
    view = copy.copy(train)
    for attr in ("transform", "shift"):
        if hasattr(view, attr) and hasattr(val, attr):
            setattr(view, attr, getattr(val, attr))
    return view


def split_holdout(bundle, fraction, seed=HOLDOUT_SEED):
    """``bundle`` with ``train`` reduced to the kept part and ``holdout`` set (``fraction`` None: unchanged)."""
    if not fraction:
        return bundle
    kept, held = stratified_indices(labels_of(bundle.train), fraction, seed)
    return SplitBundle(bundle.info, Subset(bundle.train, kept), bundle.val,
                       holdout=Subset(clean_view(bundle.train, bundle.val), held))
