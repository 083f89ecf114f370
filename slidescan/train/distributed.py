"""Multi-process training under ``torchrun``: process group set-up, sharding and gathering.

Launched by ``torchrun --nproc_per_node N -m slidescan train ...``, every process reads RANK,
WORLD_SIZE and LOCAL_RANK from the environment. NCCL joins GPUs, gloo
joins CPU processes. A plain ``slidescan train`` is a world of one and touches none of this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from slidescan.engine.device import select_device


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Only rank 0 prints, writes weights and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group when launched by torchrun; a world of one otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=select_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    chosen = select_device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, device=chosen)


def shard_indices(n: int, ctx: DistContext) -> np.ndarray:
    """Indices this rank evaluates: every world_size-th item, no padding or duplicates."""
    return np.arange(ctx.rank, n, ctx.world_size)


def gather_shards(values: np.ndarray, n: int, ctx: DistContext) -> np.ndarray:
    """Reassemble per-rank results of :func:`shard_indices` into one array of length ``n``."""
    if not ctx.distributed:
        return values
    parts: list[np.ndarray | None] = [None] * ctx.world_size
    dist.all_gather_object(parts, values)
    out = np.empty(n, dtype=values.dtype)
    for rank, part in enumerate(parts):
        out[rank :: ctx.world_size] = part
    return out


def sum_across(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (training loss and accuracy counts)."""
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(model: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint)."""
    if ctx.distributed:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    """Leave the process group."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
