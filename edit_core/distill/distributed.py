"""Data parallelism through ``torch.distributed`` (``torchrun`` / ``accelerate launch`` set the env vars).

``init_distributed`` joins the process group from the environment (``env://``: WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) with NCCL on CUDA and gloo on CPU; a plain ``python`` run is a
world of one. After each backward, ``average_gradients`` all-reduces every trainable gradient (one
flat buffer) and divides by the world size, so N ranks with batch B step exactly like one process with
batch N·B up to float rounding. Rank 0 writes every file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we created the process group (and destroy it in ``close``)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def init_distributed(device: Optional[str] = None) -> DistContext:
    """A ``DistContext`` for this process; joins the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(device or default_device())
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
        owns = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistContext(rank, world, local_rank, device, owns)


def average_gradients(params: Sequence[torch.nn.Parameter], ctx: DistContext) -> None:
    if not ctx.distributed:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
        offset += n


def broadcast_parameters(params: Sequence[torch.Tensor], ctx: DistContext) -> None:
    if ctx.distributed:
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)


def mean_across_ranks(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist())}


def any_rank(flag: bool, ctx: DistContext) -> bool:
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


__all__ = ["DistContext", "init_distributed", "average_gradients", "broadcast_parameters", "mean_across_ranks",
           "any_rank", "default_device"]
