"""Process-group context: one process, or torchrun's DistributedDataParallel ranks."""
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from utils.errors import UserError

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
    """Join torchrun's process group when launched by torchrun (WORLD_SIZE > 1).

    NCCL when CUDA is available (each process binds GPU LOCAL_RANK before joining,
    so collectives never guess a device), Gloo on CPU. The rendezvous address,
    rank and world size come from torchrun's environment variables.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "gloo"
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) visible: "
                            "--nproc_per_node must not exceed the GPUs per node")
        torch.cuda.set_device(local)
        backend = "nccl"
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


def broadcast_buffers(ctx, module, src=0):
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    Training attacks run the bare module in train mode, so each rank's running
    statistics drift apart between DDP forwards; evaluation and checkpoints use
    rank 0's. Parameters need no sync: DDP keeps them identical.
    """
    if ctx.enabled:
        for buf in module.buffers():
            if buf.is_contiguous():
                dist.broadcast(buf, src)
            else:  # e.g. a (1, C, 1, 1) buffer after .to(memory_format=channels_last)
                tmp = buf.contiguous()
                dist.broadcast(tmp, src)
                buf.copy_(tmp)


def select_device(cfg, ctx):
    """This rank's device: ``--device`` (cpu, cuda, cuda:N) when given, else the first --multigpu id
    or LOCAL_RANK's GPU when CUDA is available, else CPU (with one warning for --multigpu)."""
    wanted = getattr(cfg, "device", None)
    if wanted == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if wanted:
            raise UserError(f"--device {wanted}: CUDA is not available on this machine; pass --device cpu")
        if cfg.multigpu:
            log.warning("CUDA is not available: --multigpu %s ignored, running on CPU", cfg.multigpu)
        return torch.device("cpu")
    if ctx.enabled:
        torch.cuda.set_device(ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    gpu = cfg.multigpu[0] if cfg.multigpu else 0
    if wanted and ":" in wanted:
        index = int(wanted.split(":")[1])
        if cfg.multigpu and index not in cfg.multigpu:
            raise UserError(f"--device {wanted} is not among --multigpu {','.join(map(str, cfg.multigpu))}; "
                            "pass one of them")
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {wanted}: this machine has {torch.cuda.device_count()} GPU(s)")
        gpu = index
    return torch.device("cuda", gpu)


def broadcast_object(ctx, obj, src=0):
    """Rank ``src``'s ``obj`` (picklable) on every rank; ``obj`` itself on one process."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def unwrap(model):
    """The model inside a DDP/DataParallel wrapper (the model itself when unwrapped)."""
    return model.module if hasattr(model, "module") else model
