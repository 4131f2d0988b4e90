"""Multi-process data-parallel set-up under ``torchrun`` (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "cpu") -> DistInfo:
    """Initialise the process group when launched by ``torchrun`` (WORLD_SIZE > 1)."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=torch.device(device))
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    return DistInfo(rank, world, local, dev)


def all_ranks_equal(value: float, info: DistInfo) -> bool:
    """Whether every rank holds the same number (used to check that replicas stay in sync)."""
    if not info.enabled:
        return True
    t = torch.tensor([value, -value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t[0].item() == value and -t[1].item() == value)


def sum_across_ranks(values: list[int]) -> list[int]:
    """Element-wise sum of integer counts over all ranks (the values themselves when not
    distributed); the tensor lives where the backend needs it (CUDA for nccl)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    dev = (torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl"
           else torch.device("cpu"))
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return [int(v) for v in t.tolist()]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
