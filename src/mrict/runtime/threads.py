"""CPU thread policy: how many intra-op threads a process uses, chosen at start and, when
automatic, followed while a training runs.

PyTorch's CPU kernels parallelise with OpenMP; by default every process uses one thread
per core. When two such processes share the cores, their OpenMP barriers wait on threads
that the other process has descheduled, and both slow down many times over (measured in
``bench/threads.py``: two 2-thread U-Net trainers on 2 cores ran 8x slower each). mrict
therefore counts the cores it may use (CPU affinity and cgroup quota), subtracts the
cores other processes keep busy at start, and uses at least one thread. A job that was
alone when it started would keep all cores after a second one arrives, so training loops
call :func:`follow_load` after every step: about once a second it measures the cores
other processes used (all busy time minus this process's own CPU time) and lowers the
count at once, or raises it after the cores stayed free for several seconds.

Order of precedence: ``--threads`` / ``MRICT_THREADS`` (a number, or ``auto``), then
``OMP_NUM_THREADS`` (left to PyTorch), then ``auto``. Results are bit-identical for the
same seed *and* the same thread count (convolution sums are split by thread), so the
chosen count is recorded with every run; pin it for exact reproduction on a loaded machine.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
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
    return _busy_between(before, _cpu_times(cpus, stat) or {})


def _busy_between(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> float:
    """Busy cores between two :func:`_cpu_times` samples (CPUs that made no progress, or
    are missing from ``after``, count as idle)."""
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


def _niced() -> bool:
    try:
        return os.getpriority(os.PRIO_PROCESS, 0) > 0
    except (AttributeError, OSError):
        return False


class LoadFollower:
    """Re-plans an automatic thread count from the load other processes put on the cores.

    ``poll()`` is cheap between checks; every ``interval_s`` seconds it reads
    ``/proc/stat`` and this process's CPU time and returns a new thread count, or None to
    keep the current one. Other processes' load (in cores) is the busy time of the usable
    CPUs minus this process's own CPU time over the interval (a niced process's own time
    is not in the busy count and is not subtracted). Fewer free cores lower the count at
    the next check; more free cores raise it only after ``raise_after`` checks in a row,
    so a short pause of another job does not make two jobs fight over the cores.
    """

    def __init__(
        self,
        usable: int,
        threads: int,
        *,
        interval_s: float = 1.0,
        raise_after: int = 3,
        cpus: list[int] | None = None,
        stat: Path = Path("/proc/stat"),
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self.usable, self.threads = usable, threads
        self.interval_s, self.raise_after = interval_s, raise_after
        self.cpus = affinity_cpus() if cpus is None else cpus
        self.stat, self.clock, self.cpu_clock = stat, clock, cpu_clock
        self.subtract_own = not _niced()
        self.others: float | None = None  # last measured load of other processes, cores
        self._want_more = 0
        self._sample = self._take()

    def _take(self) -> tuple[float, float, dict[int, tuple[int, int]] | None]:
        return self.clock(), self.cpu_clock(), _cpu_times(self.cpus, self.stat)

    def _others(self, old: tuple, new: tuple) -> float | None:
        (w0, c0, t0), (w1, c1, t1) = old, new
        if not t0 or not t1 or w1 <= w0:
            return None
        busy = _busy_between(t0, t1)
        own = (c1 - c0) / (w1 - w0) if self.subtract_own else 0.0
        return max(0.0, busy - own)

    def poll(self) -> int | None:
        """A new thread count if the load asks for one, else None."""
        if self.clock() - self._sample[0] < self.interval_s:
            return None
        new = self._take()
        others, self._sample = self._others(self._sample, new), new
        if others is None:
            return None
        self.others = others
        want = auto_threads(self.usable, others)
        if want > self.threads:
            self._want_more += 1
            if self._want_more < self.raise_after:
                return None
        self._want_more = 0
        if want == self.threads:
            return None
        self.threads = want
        return want


_APPLIED: ThreadPlan | None = None
_FOLLOWER: LoadFollower | None = None
_USED: list[int] = []


def apply_thread_plan(plan: ThreadPlan, follow: bool = True) -> ThreadPlan:
    """Set PyTorch's intra-op thread count to ``plan.threads``; remember the plan. An
    automatic plan is then followed by :func:`follow_load` (unless ``follow`` is False)."""
    global _APPLIED, _FOLLOWER
    import torch

    if torch.get_num_threads() != plan.threads:
        torch.set_num_threads(plan.threads)
    _APPLIED = plan
    _USED[:] = [plan.threads]
    _FOLLOWER = (
        LoadFollower(plan.usable_cpus, plan.threads) if follow and plan.source == "auto" else None
    )
    return plan


def follow_load() -> int | None:
    """Under an automatic plan, adapt the thread count to the current load (see
    :class:`LoadFollower`; a no-op between checks and under any other plan). Returns the
    new count when it changed, and says so on stderr."""
    if _FOLLOWER is None:
        return None
    new = _FOLLOWER.poll()
    if new is None:
        return None
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(new)
    if new not in _USED:
        _USED.append(new)
    print(
        f"mrict: CPU threads {old} -> {new} "
        f"({_FOLLOWER.others:.1f} of {_FOLLOWER.usable} cores busy with other processes)",
        file=sys.stderr,
    )
    return new


def threads_used() -> list[int]:
    """The thread counts this process has used since its plan was applied, in order of
    first use (one entry unless the load changed it); PyTorch's count when none was."""
    if _USED:
        return list(_USED)
    import torch

    return [torch.get_num_threads()]


def current_plan() -> ThreadPlan:
    """The plan applied in this process, or PyTorch's own setting when none was."""
    if _APPLIED is not None:
        return _APPLIED
    import torch

    return ThreadPlan(torch.get_num_threads(), "default", usable_cpus(), None)
