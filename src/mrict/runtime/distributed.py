"""Distributed data parallel through ``torchrun``: process-group setup, rank helpers, sampling.

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything degrades to a single
process: ``is_main()`` is True and ``barrier()`` does nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Rank layout of this process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank layout from the torchrun environment variables (single process when absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return DistInfo(rank=rank, local_rank=local, world_size=world)


def init_distributed(device: torch.device | None = None) -> DistInfo:
    """Join the process group when launched by torchrun: nccl on CUDA, gloo on CPU.

    Idempotent; returns the rank layout. A single process never creates a group.
    """
    info = env_info()
    if not info.enabled or not dist.is_available():
        return DistInfo()
    if not dist.is_initialized():
        use_cuda = (device is None or device.type == "cuda") and torch.cuda.is_available()
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
        dist.init_process_group(backend=backend)
    return DistInfo(
        rank=dist.get_rank(), local_rank=info.local_rank, world_size=dist.get_world_size()
    )


def is_dist() -> bool:
    """Whether a process group is active."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the only rank that logs and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_dist():
        dist.barrier()


def shard_indices(
    order: torch.Tensor | list[int], info_rank: int | None = None, world: int | None = None
) -> list[int]:
    """This rank's share of a global sample ``order``: every ``world``-th item from ``rank``,
    after padding by wrapping around so all ranks get the same count (as DistributedSampler)."""
    r = rank() if info_rank is None else info_rank
    w = world_size() if world is None else world
    items = [int(i) for i in order]
    if w <= 1 or not items:
        return items
    total = -(-len(items) // w) * w
    items = items + items[: total - len(items)] if total > len(items) else items
    while len(items) < total:  # fewer items than ranks
        items = items + items[: total - len(items)]
    return items[r:total:w]


def make_sampler(
    dataset: torch.utils.data.Dataset,
    *,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
) -> torch.utils.data.Sampler | None:
    """A ``DistributedSampler`` when a process group is active, else None (use shuffle=).

    Call ``sampler.set_epoch(epoch)`` at the start of every epoch.
    """
    if not is_dist():
        return None
    return torch.utils.data.distributed.DistributedSampler(
        dataset,
        num_replicas=world_size(),
        rank=rank(),
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )


def cleanup() -> None:
    """Leave the process group (safe to call when none exists)."""
    if is_dist():
        dist.destroy_process_group()
