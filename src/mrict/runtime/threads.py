"""CPU thread policy: how many intra-op threads a process uses, chosen once at start.

PyTorch's CPU kernels parallelise with OpenMP; by default every process uses one thread
per core. When two such processes share the cores, their OpenMP barriers wait on threads
that the other process has descheduled, and both slow down many times over (measured in
``bench/threads.py``: two 2-thread U-Net trainers on 2 cores ran 8x slower each). mrict
therefore counts the cores it may use (CPU affinity and cgroup quota), subtracts the
cores other processes keep busy at start, and uses at least one thread.

Order of precedence: ``--threads`` / ``MRICT_THREADS`` (a number, or ``auto``), then
``OMP_NUM_THREADS`` (left to PyTorch), then ``auto``. Results are bit-identical for the
same seed *and* the same thread count (convolution sums are split by thread), so the
chosen count is recorded with every run; pin it for exact reproduction on a loaded machine.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mrict.errors import MrictError

ENV_VAR = "MRICT_THREADS"


@dataclass(frozen=True)
class ThreadPlan:
    """The thread decision: ``threads`` intra-op threads, and why (``source``)."""

    threads: int
    source: str  # "option", "MRICT_THREADS", "OMP_NUM_THREADS", "auto" or "default"
    usable_cpus: int
    busy_cpus: float | None  # other processes' load at start, in cores (auto only)

    def describe(self) -> str:
        busy = "" if self.busy_cpus is None else f", {self.busy_cpus:.1f} busy at start"
        return (
            f"{self.threads} CPU thread{'s' if self.threads != 1 else ''} "
            f"({self.source}; {self.usable_cpus} usable{busy})"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _own_cgroup(root: Path, proc: Path = Path("/proc/self/cgroup")) -> Path | None:
    """This process's cgroup v2 folder under ``root`` (from ``0::/path``), if it exists."""
    try:
        for line in proc.read_text().splitlines():
            if line.startswith("0::"):
                own = root / line[3:].strip().lstrip("/")
                return own if own != root and own.is_dir() else None
    except OSError:
        pass
    return None


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup's CPU quota (v2 ``cpu.max`` of this process's cgroup,
    else of the root as seen inside a container; or v1 CFS), None if unlimited."""
    own = _own_cgroup(root)
    for folder in ([own] if own is not None else []) + [root]:
        try:
            parts = (folder / "cpu.max").read_text().split()
            if parts and parts[0] != "max":
                return int(parts[0]) / int(parts[1])
            return None
        except (OSError, ValueError, IndexError):
            continue
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def affinity_cpus() -> list[int]:
    """The CPUs this process may run on (all online CPUs where affinity is unknown)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def usable_cpus() -> int:
    """Cores this process may use: its CPU affinity, capped by the cgroup quota (>= 1)."""
    n = len(affinity_cpus())
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota - 1e-9)))
    return max(1, n)


def _cpu_times(cpus: list[int], stat: Path) -> dict[int, tuple[int, int]] | None:
    """Per-CPU (busy, total) jiffies from ``/proc/stat``; None where it cannot be read."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    wanted, out = set(cpus), {}
    for line in lines:
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *fields = line.split()
        try:
            cpu, values = int(name[3:]), [int(v) for v in fields[:8]]
        except ValueError:
            continue
        if cpu in wanted and len(values) >= 5:
            # user nice system idle iowait irq softirq steal: idle, iowait and nice time
            # do not count as busy (a niced process yields the core to us)
            free = values[1] + values[3] + values[4]
            out[cpu] = (sum(values) - free, sum(values))
    return out


def busy_cpus(
    sample_s: float = 0.3, cpus: list[int] | None = None, stat: Path = Path("/proc/stat")
) -> float | None:
    """Cores kept busy by other processes over ``sample_s`` seconds, in cores (this process
    sleeps meanwhile; time of niced processes does not count); None where ``/proc/stat``
    is unavailable (not Linux)."""
    cpus = affinity_cpus() if cpus is None else cpus
    before = _cpu_times(cpus, stat)
    if not before:
        return None
    time.sleep(sample_s)
    after = _cpu_times(cpus, stat) or {}
    busy = 0.0
    for cpu, (b0, t0) in before.items():
        if cpu in after and after[cpu][1] > t0:
            busy += (after[cpu][0] - b0) / (after[cpu][1] - t0)
    return busy


def auto_threads(usable: int, busy: float | None) -> int:
    """Threads for ``usable`` cores of which ``busy`` (cores, may be None) are taken: the
    free cores, rounded to the nearest core, at least one."""
    if busy is None:
        return usable
    return max(1, min(usable, usable - math.floor(busy + 0.5)))


def parse_threads(value: str | int | None, where: str) -> int | None:
    """``"auto"``/None/"" -> None; a positive integer -> itself; else :class:`MrictError`."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise MrictError(f"{where} must be a positive integer or 'auto', got {value!r}")
    return n


def _is_auto(value: str | int | None) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def plan_threads(option: str | int | None = None) -> ThreadPlan:
    """Decide the intra-op thread count (see the module docstring for the precedence; an
    explicit ``auto`` in the option or in ``MRICT_THREADS`` means auto, whatever comes
    later in the order says)."""
    usable = usable_cpus()
    n = parse_threads(option, "--threads")
    if n is not None:
        return ThreadPlan(n, "option", usable, None)
    env = os.environ.get(ENV_VAR)
    n = None if _is_auto(option) else parse_threads(env, ENV_VAR)
    if n is not None:
        return ThreadPlan(n, ENV_VAR, usable, None)
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp and not (_is_auto(option) or _is_auto(env)):
        import torch

        return ThreadPlan(torch.get_num_threads(), "OMP_NUM_THREADS", usable, None)
    busy = busy_cpus()
    return ThreadPlan(auto_threads(usable, busy), "auto", usable, busy)


_APPLIED: ThreadPlan | None = None


def apply_thread_plan(plan: ThreadPlan) -> ThreadPlan:
    """Set PyTorch's intra-op thread count to ``plan.threads``; remember the plan."""
    global _APPLIED
    import torch

    if torch.get_num_threads() != plan.threads:
        torch.set_num_threads(plan.threads)
    _APPLIED = plan
    return plan


def current_plan() -> ThreadPlan:
    """The plan applied in this process, or PyTorch's own setting when none was."""
    if _APPLIED is not None:
        return _APPLIED
    import torch

    return ThreadPlan(torch.get_num_threads(), "default", usable_cpus(), None)
