"""torch.distributed from the standard environment (torchrun, Ray Train, submitit, launch_local).

RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT select DDP; without WORLD_SIZE the run is a
single process. gloo on CPU, NCCL on GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device: 'cuda' requested but no CUDA device is visible; use 'cpu' or 'auto'")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup_distributed(device: str = "auto") -> DistEnv:
    """Join the process group described by the environment (if any); idempotent."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    target = pick_device(device, local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if target.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=float(os.environ.get("WSSS_DIST_TIMEOUT_S", "1800"))))
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=target)


def barrier(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.barrier()


def gather_objects(env: DistEnv, obj: Any) -> list[Any]:
    """Every rank's ``obj`` on every rank (small things only: RNG states, summaries)."""
    if not (env.distributed and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(env: DistEnv, obj: Any) -> Any:
    if not (env.distributed and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_flag(env: DistEnv, flag: bool) -> bool:
    """True on every rank if it is true on any rank (e.g. a non-finite loss somewhere)."""
    if not (env.distributed and dist.is_initialized()):
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
