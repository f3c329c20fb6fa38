"""FLOP counting of one training step and the machine's peak matrix-multiply FLOP/s."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import sync

_CONV_OPS = ("convolution", "convolution_backward", "_convolution", "conv2d", "cudnn_convolution")


def count_flops(fn: Callable[[], Any]) -> dict[str, int]:
    """FLOPs of everything ``fn()`` runs (forward and backward): ``{"total", "conv"}``.

    Counted by torch's FlopCounterMode (a multiply-add = 2 FLOPs); ``conv`` sums the
    convolution and convolution-backward operators."""
    mode = FlopCounterMode(display=False)
    with mode:
        fn()
    counts = mode.get_flop_counts().get("Global", {})
    total = int(mode.get_total_flops())
    conv = sum(int(v) for op, v in counts.items() if str(op).split(".")[-1] in _CONV_OPS)
    return {"total": total, "conv": conv}


def peak_matmul_flops(
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    sizes: tuple[int, ...] = (1024, 2048),
    repeats: int = 3,
    budget_s: float = 3.0,
) -> dict[str, float]:
    """Best observed FLOP/s of square ``n x n`` matmuls in ``dtype`` (2 n^3 FLOPs each)."""
    device = torch.device(device)
    best, best_n = 0.0, 0
    start = time.perf_counter()
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.mm(a, b)  # warm-up (library initialisation, packing)
        sync(device)
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            dt = time.perf_counter() - t0
            rate = 2.0 * n**3 / dt
            if rate > best:
                best, best_n = rate, n
            if time.perf_counter() - start > budget_s:
                break
    return {"flops_per_s": best, "n": float(best_n)}
