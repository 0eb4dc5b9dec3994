"""Data parallel training across processes with PyTorch's DDP, launched by torchrun.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them this is a single process. NCCL
connects GPUs, gloo connects CPU processes (and carries the host-side flags of GPU runs). Every
rank draws the same global batch and trains on its own slice of it, so N processes take exactly
the optimizer steps one process would take with the whole batch. Only rank 0 writes
checkpoints, samples and wandb.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device_name: str) -> tuple[Ranks, str]:
    """Join the process group when launched by torchrun; return the ranks and the device to use
    (each GPU process takes the GPU of its local rank)."""
    if "RANK" not in os.environ:
        return Ranks(), device_name
    ranks = Ranks(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(ranks.local_rank)
        device_name = f"cuda:{ranks.local_rank}"
    # NCCL for the gradients on the GPUs, gloo for the host-side flags any_rank exchanges
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if use_cuda else "gloo")
    return ranks, device_name


def mean_across_ranks(value: torch.Tensor, ranks: Ranks) -> float:
    """The mean of a scalar over all ranks (a host sync: use at log time only)."""
    if ranks.distributed:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= ranks.world_size
    return value.item()


def any_rank(flag: bool, ranks: Ranks) -> bool:
    """True on every rank when it is true on at least one, so all ranks take the same branch. The
    flag goes through host memory (gloo), so the host never waits for a GPU to finish its work."""
    if not ranks.distributed:
        return flag
    value = torch.tensor([float(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def teardown(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()
