"""This process's place among torchrun's ranks, and the few collectives the trainer needs.

    dist = init_distributed()            # rank 0 of 1 without torchrun; gloo on CPU, nccl on CUDA under it
    total = dist.all_sum([tokens])       # float64 sums over ranks
    n = dist.all_max(len(micro_batches))

torchrun sets WORLD_SIZE/RANK/LOCAL_RANK (one node: `--standalone`; several: `--nnodes`, `--rdzv-endpoint`,
docs/SCALE.md). Without it every call is the identity, so a single process needs no process group.

On CUDA the group has both backends, `cpu:gloo,cuda:nccl`: NCCL for the GPU tensors, gloo for CPU ones (FSDP's
CPU offload keeps its shards, their gradients and norms on the CPU). Collectives wait up to TIMEOUT, not torch's
default (10 minutes for NCCL): under `thinkrl run` the ranks meet after whole stages, and a rank whose shard of a
stage is small (or empty: more ranks than parts) waits at that barrier for the slowest one.
THINKRL_DIST_TIMEOUT_MIN overrides it.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

TIMEOUT = datetime.timedelta(minutes=float(os.environ.get("THINKRL_DIST_TIMEOUT_MIN", 12 * 60)))


@dataclass
class Dist:
    """This process's place among the torchrun ranks (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    def all_sum(self, values: Sequence[float]) -> list[float]:
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def all_max(self, value: int) -> int:
        if self.world == 1:
            return int(value)
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def all_gather_dict(self, d: dict) -> dict:
        """The union of every rank's dict (each rank's keys are its own)."""
        if self.world == 1:
            return d
        parts: list[dict] = [{} for _ in range(self.world)]
        torch.distributed.all_gather_object(parts, d)
        return {k: v for p in parts for k, v in p.items()}

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.owns_group:
            torch.distributed.destroy_process_group()


def default_device() -> torch.device:
    """This process's device: cuda:LOCAL_RANK where CUDA exists, else the CPU."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")


def init_distributed() -> Dist:
    """Join torchrun's process group when WORLD_SIZE > 1 (gloo on CPU, nccl + gloo on CUDA); else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    device = default_device()
    if cuda:
        torch.cuda.set_device(device)
    if world <= 1:
        return Dist(device=device)
    import torch.distributed as td

    owns = not td.is_initialized()
    if owns:
        td.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=TIMEOUT)
    return Dist(rank=td.get_rank(), world=td.get_world_size(), device=device, owns_group=owns)
