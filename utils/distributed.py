"""Process-group context: one process, or torchrun's DistributedDataParallel ranks."""
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger("rst")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0


def init_distributed():
    """Join torchrun's process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank, world, local)


def shutdown(ctx):
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(ctx, values, device):
    """Sum a list of floats across ranks (identity on one process)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if ctx.enabled:
        dist.all_reduce(t)
    return t.tolist()


def barrier(ctx):
    if ctx.enabled:
        dist.barrier()


def select_device(cfg, ctx):
    """CUDA device for this rank (from --multigpu or LOCAL_RANK), else CPU with one warning."""
    if not torch.cuda.is_available():
        if cfg.multigpu:
            log.warning("CUDA is not available: --multigpu %s ignored, running on CPU", cfg.multigpu)
        return torch.device("cpu")
    if ctx.enabled:
        torch.cuda.set_device(ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    gpu = cfg.multigpu[0] if cfg.multigpu else 0
    return torch.device("cuda", gpu)
