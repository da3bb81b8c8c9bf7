"""Distributed data parallel under ``torchrun``: one process per device, only rank 0 writes anything.

``torchrun --nproc_per_node N cxr-tui train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; the same command
without it runs in one process. NCCL on CUDA, gloo on CPU (how the tests run it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (e.g. the run directory it created)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (validation predictions, to score on rank 0)."""
        if not self.enabled:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def all_true(self, flag: bool) -> bool:
        """True on every rank iff ``flag`` is true on every rank (so all ranks stop together)."""
        if not self.enabled:
            return flag
        device = f"cuda:{self.local_rank}" if dist.get_backend() == "nccl" else "cpu"
        tensor = torch.tensor([0 if flag else 1], device=device)
        dist.all_reduce(tensor)
        return int(tensor.item()) == 0


def init_distributed() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
