"""Device, precision and distributed helpers (single process)."""

from __future__ import annotations

import pytest
import torch

from mrict.errors import MrictError
from mrict.runtime import distributed as dist
from mrict.runtime.device import (
    autocast_context,
    bf16_supported,
    grad_scaler,
    pick_device,
    resolve_precision,
)


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(MrictError, match="unknown device"):
        pick_device("warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(MrictError, match="CUDA is not available"):
            pick_device("cuda")


def test_precision_resolution_and_autocast() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "auto") == ("bf16" if bf16_supported(cpu) else "fp32")
    assert resolve_precision(cpu, "fp32") == "fp32"
    with pytest.raises(MrictError, match="fp16"):
        resolve_precision(cpu, "fp16")
    with pytest.raises(MrictError, match="unknown precision"):
        resolve_precision(cpu, "fp8")
    conv = torch.nn.Conv2d(1, 2, 3)
    x = torch.rand(1, 1, 8, 8)
    with autocast_context(cpu, "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with autocast_context(cpu, "fp32"):
        assert conv(x).dtype == torch.float32
    assert not grad_scaler(cpu, "bf16").is_enabled()


def test_single_process_distributed_helpers() -> None:
    assert dist.env_info().world_size >= 1
    assert dist.is_main() and dist.world_size() == 1
    dist.barrier()  # no-op
    assert dist.make_sampler(list(range(5))) is None
    order = list(range(7))
    shards = [dist.shard_indices(order, r, 2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 4
    assert sorted(set(shards[0]) | set(shards[1])) == order
