"""Data parallel training with PyTorch's DDP, launched by torchrun (which sets RANK, LOCAL_RANK and
WORLD_SIZE; without them this is one process). Every rank draws the same global batch and trains on
its own slice, so N processes take exactly the steps one would take with the whole batch. Only rank 0
writes checkpoints and wandb; each node's local rank 0 prepares the data (nodes need not share a disk).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

# how long the other ranks wait while their node prepares the data (tokenizing a large data=custom
# corpus can outlast the process group's default 30 minutes)
DATA_TIMEOUT = timedelta(hours=6)
_host_group: dist.ProcessGroup | None = None  # gloo, with DATA_TIMEOUT: host-side waits and exchanges


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_name: str) -> tuple[Ranks, str]:
    """Join the process group when launched by torchrun; each GPU process takes its local rank's GPU."""
    if "RANK" not in os.environ:
        return Ranks(), device_name
    ranks = Ranks(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(ranks.local_rank)
        device_name = f"cuda:{ranks.local_rank}"
    # NCCL for the gradients on the GPUs, gloo for the host-side flags any_rank exchanges
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if use_cuda else "gloo")
    global _host_group
    _host_group = dist.new_group(backend="gloo", timeout=DATA_TIMEOUT)
    return ranks, device_name


def wrap_model(model: torch.nn.Module, compile_: bool, ranks: Ranks,
               device: torch.device) -> tuple[torch.nn.Module, DistributedDataParallel | None]:
    """The module the training step calls, and the DDP wrapper (None on one process), whose
    require_backward_grad_sync holds the all-reduce back until the last micro-batch.

    DDP wraps first and torch.compile compiles the wrapper: the compiler then splits the graph at
    DDP's gradient buckets, so each bucket's all-reduce overlaps the rest of the backward pass."""
    ddp = None
    if ranks.world_size > 1:
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    step_model = ddp or model
    return (torch.compile(step_model) if compile_ else step_model), ddp


def barrier(ranks: Ranks) -> None:
    """Hold every rank until all get here (up to DATA_TIMEOUT: a node may be preparing its data)."""
    if ranks.world_size > 1:
        dist.barrier(group=_host_group)


def gather_to_main(value: object, ranks: Ranks) -> list[object] | None:
    """Every rank's `value`, in rank order, on rank 0 (None on the others); [value] on one process."""
    if ranks.world_size == 1:
        return [value]
    gathered = [None] * ranks.world_size if ranks.is_main else None
    dist.gather_object(value, gathered, dst=0, group=_host_group)
    return gathered


def mean_across_ranks(value: torch.Tensor, ranks: Ranks) -> float:
    """The mean of a scalar over all ranks (a host sync: use at log time only)."""
    if ranks.world_size > 1:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= ranks.world_size
    return value.item()


def any_rank(flag: bool, ranks: Ranks) -> bool:
    """True on every rank when it is true on one, so all take the same branch; through host memory
    (gloo), so the host never waits for a GPU to finish its work."""
    if ranks.world_size == 1:
        return flag
    value = torch.tensor([float(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def teardown(ranks: Ranks) -> None:
    """Leave the process group, if this process joined one (torchrun with one process too)."""
    if dist.is_initialized():
        dist.destroy_process_group()
