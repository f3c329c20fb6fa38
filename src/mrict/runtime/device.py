"""Device choice and mixed precision (autocast, fp16 grad scaling) for every stage."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal, get_args

import torch

from mrict.errors import MrictError

#: the precision choices of every config and command (``auto``: :func:`resolve_precision`)
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def pick_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA (the local rank's GPU under torchrun) if available, else CPU.

    Any explicit torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) is
    accepted if that device exists; otherwise :class:`MrictError`.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device(
                "cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count()
            )
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise MrictError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MrictError(f"device {name!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MrictError(
                f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    elif device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise MrictError(f"device {name!r} requested but MPS is not available")
    return device


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 autocast is fast on ``device`` (native bf16 GPU, or a CPU with AVX-512
    BF16 / AMX; on other CPUs bf16 is emulated and slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            capability = torch.backends.cpu.get_cpu_capability()
        except Exception:  # pragma: no cover - very old torch
            return False
        if capability not in ("AVX512", "AMX"):
            return False
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
                flags = fh.read()
        except OSError:
            return capability == "AMX"
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def cpu_bf16_path() -> str:
    """Which native bf16 instructions this CPU has: ``"AMX"`` (AMX-BF16 tiles, Intel
    Sapphire Rapids and later), ``"AVX-512 BF16"`` (e.g. AMD Zen 4, Intel Cooper Lake) or
    ``"none"`` (bf16 emulated, slower than fp32)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            flags = fh.read()
    except OSError:
        flags = ""
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16"
    return "none"


def resolve_precision(device: torch.device | str, precision: str = "auto") -> str:
    """``"auto"`` -> ``"bf16"`` where supported, else ``"fp32"``; checks explicit choices.

    fp16 is refused on CPU (no fp16 autocast speed-up there); bf16 is allowed anywhere torch
    supports it (it may be slow where :func:`bf16_supported` is False).
    """
    device = torch.device(device)
    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise MrictError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise MrictError("fp16 precision needs a CUDA GPU; use bf16 or fp32 on this device")
    return precision


@contextlib.contextmanager
def autocast_context(device: torch.device | str, precision: str) -> Iterator[None]:
    """Autocast for ``precision`` ("fp32" -> no-op, "bf16", "fp16") on ``device``."""
    device = torch.device(device)
    if precision == "fp32":
        yield
        return
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        raise MrictError(f"unknown precision {precision!r} (use fp32, bf16 or fp16)")
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def grad_scaler(device: torch.device | str, precision: str) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 on CUDA (a no-op pass-through otherwise)."""
    device = torch.device(device)
    enabled = precision == "fp16" and device.type == "cuda"
    return torch.amp.GradScaler(device.type, enabled=enabled)
