"""DataLoader construction: deterministic order given (seed, epoch), any world size.

A DistributedSampler is used for one process too, so the example order depends
only on (seed, epoch): a run resumed at epoch e sees exactly the batches that
an uninterrupted run would have seen, whatever the number of ranks.
"""
import os

import torch
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler


def is_in_memory(dataset):
    """True for tensor-backed datasets (possibly wrapped in Subsets)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return bool(getattr(dataset, "in_memory", False))


def num_workers(dataset, cfg):
    # Workers only add start-up cost when every example is already a tensor in memory.
    if is_in_memory(dataset):
        return 0
    return max(0, min(int(getattr(cfg, "workers", 0) or 0), os.cpu_count() or 1))


def make_loader(dataset, batch_size, train, cfg, epoch=0, rank=0, world_size=1, seed=0):
    """Loader over this rank's share of ``dataset``; ``batch_size`` is the global batch.

    ``cfg.one_batch`` (train only) keeps the first global batch of the dataset,
    so every epoch is one step per rank on the same examples (a debugging aid).
    """
    per_rank = max(1, int(batch_size) // max(1, int(world_size)))
    if train and getattr(cfg, "one_batch", False):
        dataset = Subset(dataset, range(min(len(dataset), per_rank * world_size)))
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=bool(train),
                                 seed=int(seed or 0), drop_last=False)
    sampler.set_epoch(int(epoch))
    workers = num_workers(dataset, cfg)
    return DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), drop_last=False, persistent_workers=False)
