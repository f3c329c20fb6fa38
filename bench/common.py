"""Shared benchmark helpers: timing, peak memory, machine description, result records."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class Result:
    """One benchmark's outcome: a title, table rows (dicts with the same keys), free notes.

    ``values`` holds machine-readable figures (seconds, ratios, FLOP/s...) for tests and JSON.
    """

    name: str
    title: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "rows": self.rows,
            "notes": self.notes,
            "values": self.values,
            "wall_s": self.wall_s,
            "peak_rss_mb": self.peak_rss_mb,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        return cls(**d)


@dataclass
class Settings:
    """What every benchmark receives: ``quick`` (tiny sizes, a few minutes for the whole
    suite), the torch ``device`` string, a ``tiny`` flag for tests (smallest possible
    sizes, figures meaningless) and the ``seed``."""

    quick: bool = False
    device: str = "cpu"
    tiny: bool = False
    seed: int = 0

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


def sync(device: torch.device | str) -> None:
    """Wait for queued device work (CUDA kernels are asynchronous; CPU is a no-op)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform != "darwin" else rss / 2**20


def time_call(fn: Callable[[], Any], device: str | torch.device = "cpu") -> float:
    """Seconds taken by ``fn()`` including queued device work."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(
    fns: dict[str, Callable[[], Any]],
    steps: int,
    warmup: int = 1,
    device: str | torch.device = "cpu",
) -> dict[str, list[float]]:
    """Run each callable once per round, alternating, for ``warmup`` untimed rounds and
    ``steps`` timed rounds; returns the per-call seconds of each. Alternation means a
    change in machine load hits every contender alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(steps):
        # alternate the order each round so neither side always runs first
        keys = list(fns) if i % 2 == 0 else list(reversed(list(fns)))
        for k in keys:
            times[k].append(time_call(fns[k], device))
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "n/a"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict[str, str]:
    """Machine, versions and date for the results file."""
    import numpy

    from mrict.runtime.device import cpu_bf16_path, resolve_precision

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu_name(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "cpu capability": str(torch.backends.cpu.get_cpu_capability()),
        "cpu bf16 path": cpu_bf16_path(),
        "precision auto on cpu": resolve_precision("cpu", "auto"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "device": device,
        "load average at start (1/5/15 min)": load_average(),
    }
    try:
        import monai

        info["monai"] = monai.__version__
    except Exception:  # pragma: no cover - monai is a dependency
        pass
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def fmt(value: Any) -> str:
    """Compact table formatting: 3 significant digits for floats."""
    if isinstance(value, float):
        if value != value:  # nan
            return "n/a"
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return f"{value:.3g}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |")
    return "\n".join(lines)


def make_dataset(
    root,
    patients: int,
    slices: int,
    size: int,
    seed: int = 0,
    test_patients: int = 0,
    fmt: str = "dicom",
):
    """Simulate a small built-in data set (``patients`` per modality) into ``root``."""
    from mrict.phantom.simulate import simulate_dataset

    return simulate_dataset(
        root,
        mri_patients=patients,
        ct_patients=patients,
        test_patients=test_patients,
        slices_per_patient=slices,
        size=max(32, size),
        seed=seed,
        fmt=fmt,
        progress=False,
        workers=1,
    )


#: thread settings a benchmark's child process must not inherit (each chooses its own)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MRICT_THREADS", "OMP_WAIT_POLICY")


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a benchmark child: the repository first on
    ``PYTHONPATH`` (so ``bench`` imports), none of :data:`THREAD_VARS`, plus ``extra``."""
    repo = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p),
    }
    for var in THREAD_VARS:
        env.pop(var, None)
    return {**env, **extra}


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until ``path`` exists. RuntimeError (with the end of ``proc``'s stderr) if the
    process exits first, or after ``timeout`` seconds."""
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"load process failed: {proc.stderr.read()[-500:]}")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("load process did not warm up")
        time.sleep(0.05)
