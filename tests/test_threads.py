"""CPU thread policy: usable cores (affinity, cgroup quota), busy cores from /proc/stat,
the automatic count, the precedence of --threads / MRICT_THREADS / OMP_NUM_THREADS, and the
CLI's global --threads option."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mrict.cli import run
from mrict.errors import MrictError
from mrict.runtime import threads as th


@pytest.fixture
def torch_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Restore torch's intra-op thread count and the applied plan after the test."""
    before = torch.get_num_threads()
    monkeypatch.setattr(th, "_APPLIED", th._APPLIED)
    monkeypatch.setattr(th, "_FOLLOWER", th._FOLLOWER)
    monkeypatch.setattr(th, "_USED", list(th._USED))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(th.ENV_VAR, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.fixture
def fake_machine(monkeypatch: pytest.MonkeyPatch):
    """``fake_machine(usable, busy)``: no real CPU sampling (it would sleep 0.3 s)."""

    def make(usable: int, busy: float | None) -> None:
        monkeypatch.setattr(th, "usable_cpus", lambda: usable)
        monkeypatch.setattr(th, "busy_cpus", lambda *a, **k: busy)

    return make


# --- usable cores -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("150000 100000\n", 1.5), ("200000 100000", 2.0), ("max 100000\n", None)],
)
def test_cgroup_v2_quota(tmp_path: Path, text: str, expected: float | None) -> None:
    (tmp_path / "cpu.max").write_text(text)
    assert th._cgroup_quota(tmp_path) == expected


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [("250000\n", "100000\n", 2.5), ("-1\n", "100000\n", None), ("50000", "100000", 0.5)],
)
def test_cgroup_v1_quota(tmp_path: Path, quota: str, period: str, expected: float | None) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(quota)
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(period)
    assert th._cgroup_quota(tmp_path) == expected


def test_cgroup_quota_missing_or_damaged(tmp_path: Path) -> None:
    assert th._cgroup_quota(tmp_path) is None  # neither v2 nor v1 files
    (tmp_path / "cpu.max").write_text("garbage")
    assert th._cgroup_quota(tmp_path) is None


@pytest.mark.parametrize(
    ("quota", "expected"),
    [(None, 4), (1.5, 2), (2.0, 2), (0.5, 1), (3.01, 4), (8.0, 4)],
)
def test_usable_cpus_capped_by_quota(
    monkeypatch: pytest.MonkeyPatch, quota: float | None, expected: int
) -> None:
    monkeypatch.setattr(th, "affinity_cpus", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(th, "_cgroup_quota", lambda *a: quota)
    assert th.usable_cpus() == expected


def test_affinity_falls_back_to_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(pid: int) -> set[int]:
        raise OSError("no affinity")

    monkeypatch.setattr(th.os, "sched_getaffinity", unavailable)
    monkeypatch.setattr(th.os, "cpu_count", lambda: 3)
    assert th.affinity_cpus() == [0, 1, 2]


# --- busy cores -----------------------------------------------------------------------------


def stat_text(cpus: dict[int, tuple[int, ...]]) -> str:
    """A /proc/stat: ``cpus[n]`` = (user, nice, system, idle, iowait, irq, softirq, steal);
    an aggregate line and guest columns that must not count."""
    total = [sum(col) for col in zip(*cpus.values(), strict=True)]
    lines = ["cpu  " + " ".join(map(str, total)) + " 0 0"]
    lines += [f"cpu{n} " + " ".join(map(str, v)) + " 777 777" for n, v in cpus.items()]
    lines += ["intr 12345 0 0", "ctxt 999", "btime 1700000000", "processes 42"]
    return "\n".join(lines) + "\n"


def test_busy_cpus_from_two_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stat = tmp_path / "stat"
    base = (100, 10, 50, 1000, 20, 5, 5, 0)
    stat.write_text(stat_text({n: base for n in range(5)}))
    after = {
        0: (200, 10, 50, 1000, 20, 5, 5, 0),  # +100 user: fully busy
        1: (100, 10, 50, 1100, 20, 5, 5, 0),  # +100 idle
        2: (100, 10, 50, 1000, 120, 5, 5, 0),  # +100 iowait: idle, too
        3: (120, 10, 60, 1050, 20, 5, 5, 0),  # +20 user +10 system +50 idle: 30/80
        4: (300, 10, 50, 1000, 20, 5, 5, 0),  # busy, but not in the list
    }
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        stat.write_text(stat_text(after))

    monkeypatch.setattr(th.time, "sleep", sleep)
    assert th.busy_cpus(0.25, [0], stat) == pytest.approx(1.0)
    stat.write_text(stat_text({n: base for n in range(5)}))
    assert th.busy_cpus(0.25, [1, 2], stat) == pytest.approx(0.0)
    stat.write_text(stat_text({n: base for n in range(5)}))
    assert th.busy_cpus(0.25, [0, 1, 2, 3], stat) == pytest.approx(1.0 + 30 / 80)
    assert sleeps == [0.25, 0.25, 0.25]


def test_busy_cpus_ignores_cpus_without_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stat = tmp_path / "stat"
    base = (100, 0, 0, 100, 0, 0, 0, 0)
    stat.write_text(stat_text({0: base, 1: base}))
    # cpu1 went offline between the samples; cpu0's counters did not move
    monkeypatch.setattr(th.time, "sleep", lambda s: stat.write_text(stat_text({0: base})))
    assert th.busy_cpus(0.1, [0, 1], stat) == 0.0


def test_busy_cpus_without_proc_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(th.time, "sleep", lambda s: pytest.fail("no sampling without a file"))
    assert th.busy_cpus(0.1, [0], tmp_path / "missing") is None
    # a file without the wanted CPUs is as good as none
    (tmp_path / "stat").write_text(stat_text({0: (1, 0, 0, 1, 0, 0, 0, 0)}))
    assert th.busy_cpus(0.1, [5], tmp_path / "stat") is None


# --- the automatic count and the precedence -------------------------------------------------


@pytest.mark.parametrize(
    ("usable", "busy", "expected"),
    [
        (2, 0.1, 2),
        (2, 1.0, 1),
        (2, 2.0, 1),  # never 0
        (2, 5.0, 1),
        (16, 3.4, 13),
        (16, 3.6, 12),
        (4, None, 4),
        (1, 0.0, 1),
    ],
)
def test_auto_threads(usable: int, busy: float | None, expected: int) -> None:
    assert th.auto_threads(usable, busy) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("auto", None), (" AUTO ", None), ("3", 3), (" 2 ", 2), (4, 4)],
)
def test_parse_threads_values(value: str | int | None, expected: int | None) -> None:
    assert th.parse_threads(value, "--threads") == expected


@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5", 0])
def test_parse_threads_rejects(value: str | int) -> None:
    with pytest.raises(MrictError, match="--threads must be a positive integer"):
        th.parse_threads(value, "--threads")


def test_plan_precedence(monkeypatch: pytest.MonkeyPatch, no_env, fake_machine) -> None:
    fake_machine(4, 1.2)
    plan = th.plan_threads()
    assert (plan.threads, plan.source, plan.usable_cpus, plan.busy_cpus) == (3, "auto", 4, 1.2)
    assert th.plan_threads("auto") == plan

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    plan = th.plan_threads()
    assert plan.source == "OMP_NUM_THREADS" and plan.threads == torch.get_num_threads()

    monkeypatch.setenv(th.ENV_VAR, "2")
    assert (th.plan_threads().threads, th.plan_threads().source) == (2, th.ENV_VAR)

    plan = th.plan_threads("5")
    assert (plan.threads, plan.source, plan.busy_cpus) == (5, "option", None)
    assert th.plan_threads(1).threads == 1


def test_plan_names_the_bad_setting(monkeypatch: pytest.MonkeyPatch, no_env, fake_machine) -> None:
    fake_machine(2, 0.0)
    for bad in ("0", "-1", "x"):
        with pytest.raises(MrictError, match="--threads"):
            th.plan_threads(bad)
        monkeypatch.setenv(th.ENV_VAR, bad)
        with pytest.raises(MrictError, match=th.ENV_VAR):
            th.plan_threads()
        assert th.plan_threads("2").threads == 2  # a good option wins over a bad variable
        monkeypatch.delenv(th.ENV_VAR)


def test_describe_and_as_dict() -> None:
    plan = th.ThreadPlan(1, "auto", 2, 1.04)
    assert plan.describe() == "1 CPU thread (auto; 2 usable, 1.0 busy at start)"
    assert th.ThreadPlan(3, "option", 4, None).describe() == "3 CPU threads (option; 4 usable)"
    assert plan.as_dict() == {"threads": 1, "source": "auto", "usable_cpus": 2, "busy_cpus": 1.04}


def test_apply_and_current_plan(torch_threads) -> None:
    torch.set_num_threads(2)
    plan = th.apply_thread_plan(th.ThreadPlan(1, "option", 2, None))
    assert torch.get_num_threads() == 1 and th.current_plan() is plan


# --- following the load while training ------------------------------------------------------


class FakeCores:
    """Two CPUs in a fake /proc/stat, a wall clock and this process's CPU clock that the
    test advances: ``tick(busy0, busy1, own)`` = one second with CPU n busy ``busyn`` of it
    (user time) and this process using ``own`` CPU-seconds."""

    def __init__(self, path: Path) -> None:
        self.path, self.wall, self.own = path, 0.0, 0.0
        self.jiffies = {0: [0, 0, 0, 0, 0, 0, 0, 0], 1: [0, 0, 0, 0, 0, 0, 0, 0]}
        self._write()

    def _write(self) -> None:
        self.path.write_text(stat_text({n: tuple(v) for n, v in self.jiffies.items()}))

    def tick(self, busy0: float, busy1: float, own: float) -> None:
        for cpu, busy in ((0, busy0), (1, busy1)):
            self.jiffies[cpu][0] += round(100 * busy)
            self.jiffies[cpu][3] += 100 - round(100 * busy)
        self.wall += 1.0
        self.own += own
        self._write()

    def follower(self, threads: int, **kw) -> th.LoadFollower:
        return th.LoadFollower(
            2,
            threads,
            cpus=[0, 1],
            stat=self.path,
            clock=lambda: self.wall,
            cpu_clock=lambda: self.own,
            **kw,
        )


def test_follower_gives_a_core_up_when_another_job_arrives(tmp_path: Path) -> None:
    cores = FakeCores(tmp_path / "stat")
    f = cores.follower(2)
    f.subtract_own = True
    assert f.poll() is None  # no time has passed: nothing read
    cores.tick(1.0, 1.0, own=2.0)  # alone, both cores ours
    assert f.poll() is None and f.others == pytest.approx(0.0)
    cores.tick(1.0, 1.0, own=1.0)  # another process took one core's worth
    assert f.poll() == 1 and f.others == pytest.approx(1.0) and f.threads == 1
    cores.tick(1.0, 1.0, own=1.0)  # steady pair: keep one
    assert f.poll() is None


def test_follower_raises_only_after_the_cores_stay_free(tmp_path: Path) -> None:
    cores = FakeCores(tmp_path / "stat")
    f = cores.follower(1, raise_after=3)
    f.subtract_own = True
    cores.tick(1.0, 0.0, own=1.0)
    assert f.poll() is None  # free core seen once
    cores.tick(1.0, 0.0, own=1.0)
    assert f.poll() is None  # twice
    cores.tick(1.0, 1.0, own=1.0)  # the other job is back: the count starts again
    assert f.poll() is None
    for expected in (None, None, 2):
        cores.tick(1.0, 0.1, own=1.0)
        assert f.poll() == expected
    assert f.threads == 2


def test_follower_checks_once_per_interval(tmp_path: Path) -> None:
    cores = FakeCores(tmp_path / "stat")
    f = cores.follower(2, interval_s=2.0)
    f.subtract_own = True
    cores.tick(1.0, 1.0, own=1.0)
    assert f.poll() is None and f.others is None  # 1 s < 2 s: not measured
    cores.tick(1.0, 1.0, own=1.0)
    assert f.poll() == 1 and f.others == pytest.approx(1.0)  # averaged over the 2 s


def test_follower_of_a_niced_process_does_not_subtract_its_own_time(tmp_path: Path) -> None:
    """A niced process's own time is nice time, not in the busy count: subtracting it
    would hide the other job."""
    cores = FakeCores(tmp_path / "stat")
    f = cores.follower(2)
    f.subtract_own = False
    cores.tick(1.0, 0.0, own=1.0)  # one core busy with someone else (ours is nice time)
    assert f.poll() == 1 and f.others == pytest.approx(1.0)


def test_follower_without_proc_stat_keeps_the_count(tmp_path: Path) -> None:
    clock = iter([0.0, 5.0, 10.0])
    f = th.LoadFollower(2, 2, cpus=[0], stat=tmp_path / "missing", clock=lambda: next(clock))
    assert f.poll() is None and f.threads == 2


def test_follow_load_only_under_an_auto_plan(torch_threads, capsys, monkeypatch) -> None:
    torch.set_num_threads(2)
    th.apply_thread_plan(th.ThreadPlan(2, "option", 2, None))
    assert th._FOLLOWER is None and th.follow_load() is None
    th.apply_thread_plan(th.ThreadPlan(2, "auto", 2, 0.0))
    assert th._FOLLOWER is not None and th.threads_used() == [2]
    monkeypatch.setattr(th._FOLLOWER, "poll", lambda: None)
    assert th.follow_load() is None and torch.get_num_threads() == 2
    monkeypatch.setattr(th._FOLLOWER, "poll", lambda: 1)
    th._FOLLOWER.others = 1.2
    assert th.follow_load() == 1 and torch.get_num_threads() == 1
    assert th.threads_used() == [2, 1]
    err = capsys.readouterr().err
    assert "CPU threads 2 -> 1 (1.2 of 2 cores busy with other processes)" in err
    th.apply_thread_plan(th.ThreadPlan(2, "auto", 2, 0.0), follow=False)
    assert th._FOLLOWER is None and th.threads_used() == [2]


def test_training_loop_follows_the_load_after_every_step_unless_told_not_to(
    tmp_path: Path, monkeypatch
) -> None:
    from mrict.runtime import harness

    calls: list[int] = []
    monkeypatch.setattr(harness, "follow_load", lambda: calls.append(1))

    def steps_followed(total: int, **kw) -> int:
        calls.clear()
        loop = harness.TrainingLoop(
            total=total,
            save=lambda step: None,
            checkpoint_json=tmp_path / "c.json",
            resume_command="x",
            progress=False,
            **kw,
        )
        assert loop.run(lambda step: True) == total
        return len(calls)

    assert steps_followed(4) == 4
    # a GPU run does not follow (its speed hardly depends on the CPU threads)
    assert steps_followed(3, follow_threads=False) == 0


# --- the CLI ------------------------------------------------------------------------------


def test_cli_threads_option_sets_torch_threads(capsys, torch_threads, no_env) -> None:
    torch.set_num_threads(2)
    assert run(["--threads", "1", "simulate", "--help"]) == 0
    assert torch.get_num_threads() == 1
    assert th.current_plan().source == "option"
    assert "simulate" in capsys.readouterr().out


def test_cli_environment_variable(capsys, monkeypatch, torch_threads, no_env) -> None:
    torch.set_num_threads(2)
    monkeypatch.setenv(th.ENV_VAR, "1")
    assert run(["simulate", "--help"]) == 0
    assert torch.get_num_threads() == 1 and th.current_plan().source == th.ENV_VAR


def test_cli_auto_notes_busy_cores(capsys, torch_threads, no_env, fake_machine) -> None:
    fake_machine(2, 1.0)
    torch.set_num_threads(2)
    assert run(["simulate", "--help"]) == 0
    assert torch.get_num_threads() == 1
    err = capsys.readouterr().err
    assert "other processes keep 1.0 of 2 cores busy" in err and "--threads" in err


def test_cli_version_plans_no_threads(capsys, monkeypatch, torch_threads) -> None:
    def no_planning(*a, **k):
        raise AssertionError("version must not sample the CPU load")

    monkeypatch.setattr(th, "plan_threads", no_planning)
    torch.set_num_threads(2)
    assert run(["--threads", "1", "version"]) == 0
    assert capsys.readouterr().out.startswith("mrict ")
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("value", ["0", "x"])
def test_cli_bad_threads_is_a_one_line_error(capsys, torch_threads, no_env, value) -> None:
    assert run(["--threads", value, "simulate", "--help"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: --threads must be a positive integer")
    assert "Traceback" not in captured.err + captured.out


def test_cli_bad_environment_variable(capsys, monkeypatch, torch_threads, no_env) -> None:
    monkeypatch.setenv(th.ENV_VAR, "-1")
    assert run(["simulate", "--help"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {th.ENV_VAR} must be a positive integer") and "\n" not in err
