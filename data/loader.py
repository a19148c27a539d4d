"""DataLoader construction: deterministic order given (seed, epoch), any world size.

A DistributedSampler is used for one process too, so the example order depends
only on (seed, epoch): a run resumed at epoch e sees exactly the batches that
an uninterrupted run would have seen, whatever the number of ranks.
"""
import os

import torch
from torch.utils.data import DataLoader, Sampler, Subset
from torch.utils.data.distributed import DistributedSampler

# Mixes --seed and the epoch into the seed of the loader's own generator (an odd
# constant keeps (seed, epoch) pairs apart; any fixed value would do).
EPOCH_SEED_STRIDE = 1_000_003


class SkipSampler(Sampler):
    """``sampler`` without its first ``skip`` indices (mid-epoch resume)."""

    def __init__(self, sampler, skip):
        self.sampler, self.skip = sampler, int(skip)

    def __iter__(self):
        for i, index in enumerate(self.sampler):
            if i >= self.skip:
                yield index

    def __len__(self):
        return max(0, len(self.sampler) - self.skip)


class ShardSampler(Sampler):
    """Evaluation shard of one rank: indices ``rank, rank + world_size, ...`` in order.

    Unlike DistributedSampler it never pads with repeated examples, so counts
    summed over ranks are exact (ranks may get one example fewer than others).
    """

    def __init__(self, n, rank=0, world_size=1):
        self.indices = range(int(rank), int(n), max(1, int(world_size)))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


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


def make_loader(dataset, batch_size, train, cfg, epoch=0, rank=0, world_size=1, seed=0, skip_batches=0):
    """Loader over this rank's share of ``dataset``; ``batch_size`` is the global batch.

    ``cfg.one_batch`` (train only) keeps the first global batch of the dataset,
    so every epoch is one step per rank on the same examples (a debugging aid).
    ``skip_batches`` drops this epoch's first batches (resuming a SIGTERM-interrupted
    epoch): the rest are exactly the batches an uninterrupted epoch would yield.
    The loader has its own generator seeded from (seed, epoch), so starting an
    iteration draws nothing from the global torch RNG (worker seeds come from it).
    """
    per_rank = max(1, int(batch_size) // max(1, int(world_size)))
    if train and getattr(cfg, "one_batch", False):
        dataset = Subset(dataset, range(min(len(dataset), per_rank * world_size)))
    if train:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                     seed=int(seed or 0), drop_last=False)
        sampler.set_epoch(int(epoch))
    else:  # evaluation: every example exactly once over all ranks, no padding
        sampler = ShardSampler(len(dataset), rank, world_size)
    if skip_batches:
        sampler = SkipSampler(sampler, int(skip_batches) * per_rank)
    workers = num_workers(dataset, cfg)
    generator = torch.Generator().manual_seed((int(seed or 0) * EPOCH_SEED_STRIDE + int(epoch)) % 2**63)
    return DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=workers, generator=generator,
                      pin_memory=torch.cuda.is_available(), drop_last=False, persistent_workers=False)
