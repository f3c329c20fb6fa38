"""Throughput on a shared CPU: one trainer alone against two at once, per thread policy.

Each trainer runs in its own process (``bench/thread_load.py``) for a fixed time; the
second of a pair starts once the first has warmed up, as on a workstation where a job is
already running. The pair's aggregate images/s over the time both ran is compared with the
solo images/s of the same kind; solo and pair runs alternate, ``rounds`` times.

Policies: ``default`` is PyTorch's own (one thread per core in every process, what mrict
did before :mod:`mrict.runtime.threads`); ``passive`` the same with
``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep at once instead of spinning at a
barrier); ``auto`` is mrict's (cores not busy at start, then followed while training, so
the job already running gives a core up); ``foreign+auto`` is a default-threaded job
already running when an mrict job starts; ``1+1`` two 1-thread processes (the study's
segmenter workers).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Result, Settings, child_env, make_dataset, median, wait_for_file

REPO = Path(__file__).resolve().parents[1]
PAIRS = {
    "default": ("default", "default"),
    "passive": ("passive", "passive"),
    "auto": ("auto", "auto"),
    "foreign+auto": ("default", "auto"),
    "1+1": ("1", "1"),
}


def _start(kind: str, mode: str, seconds: float, out: Path, data: str) -> subprocess.Popen:
    env = child_env()
    if mode == "passive":  # read by OpenMP when the process starts
        env["OMP_WAIT_POLICY"], mode = "PASSIVE", "default"
    cmd = [sys.executable, "-m", "bench.thread_load", kind, mode, str(seconds), str(out), data]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _finish(proc: subprocess.Popen, out: Path) -> dict:
    _, err = proc.communicate(timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"load process failed: {err[-500:]}")
    return json.loads(out.read_text())


def _rate(stamps: list[float], images: int, lo: float, hi: float) -> float:
    """images/s from the steps that ended inside [lo, hi]."""
    inside = [t for t in stamps if lo <= t <= hi]
    return (len(inside) - 1) * images / (inside[-1] - inside[0]) if len(inside) > 1 else 0.0


def solo(kind: str, mode: str, seconds: float, work: Path, data: str) -> tuple[float, dict]:
    out = work / f"solo-{kind}-{mode}.json"
    proc = _start(kind, mode, seconds, out, data)
    r = _finish(proc, out)
    return _rate(r["stamps"], r["images_per_step"], r["stamps"][0], r["stamps"][-1]), r


def pair(kind: str, modes: tuple[str, str], seconds: float, work: Path, data: str):
    """Aggregate images/s while both ran (the second job's timed window; the first runs
    until the second has finished), and each process's result."""
    a_out, b_out = work / f"pair-{kind}-a.json", work / f"pair-{kind}-b.json"
    for p in (a_out, b_out):
        for suffix in (".ready", ".stop"):
            Path(f"{p}{suffix}").unlink(missing_ok=True)
    a = _start(kind, modes[0], 0, a_out, data)
    wait_for_file(Path(f"{a_out}.ready"), a, timeout=300)
    time.sleep(1.0)  # the first job is at full speed when the second one looks at the load
    b = _start(kind, modes[1], seconds, b_out, data)
    rb = _finish(b, b_out)
    Path(f"{a_out}.stop").write_text("")
    ra = _finish(a, a_out)
    lo, hi = min(rb["stamps"]), max(rb["stamps"])
    rates = [_rate(r["stamps"], r["images_per_step"], lo, hi) for r in (ra, rb)]
    return sum(rates), ra, rb


def _threads(r: dict) -> str:
    """The threads a load process used: ``2`` or, where the load changed it, ``2>1``."""
    used = r.get("used") or [r["threads"]]
    return ">".join(str(n) for n in used)


def run(s: Settings) -> Result:
    res = Result(
        "threads", "Two trainers on one CPU: aggregate throughput of the pair vs one alone"
    )
    seconds = 2.0 if s.tiny else (8.0 if s.quick else 15.0)
    rounds = 1 if (s.tiny or s.quick) else 2
    kinds = ["seg"] if s.tiny else ["seg", "gan"]
    pairs = ["default", "auto"] if s.tiny else list(PAIRS)
    with tempfile.TemporaryDirectory(prefix="mrict-threads-") as tmp:
        work = Path(tmp)
        data = ""
        if "gan" in kinds:
            data = str(make_dataset(work / "data", 8, 8, 96, s.seed, fmt="png"))
        for kind in kinds:
            modes = ["default", "auto"] if s.tiny else ["default", "passive", "auto"]
            solos: dict[str, list[float]] = {m: [] for m in modes}
            aggs: dict[str, list[float]] = {p: [] for p in pairs}
            used: dict[str, str] = {}
            for _ in range(rounds):
                for mode in solos:
                    rate, r = solo(kind, mode, seconds, work, data)
                    solos[mode].append(rate)
                    used[f"solo {mode}"] = _threads(r)
                for name in pairs:
                    agg, ra, rb = pair(kind, PAIRS[name], seconds, work, data)
                    aggs[name].append(agg)
                    used[name] = f"{_threads(ra)}+{_threads(rb)}"
            base = median(solos["default"])
            what = (
                "U-Net step (quick, batch 8, 96 px, fp32)"
                if kind == "seg"
                else ("CycleGAN train-gan quick (2x4 images/step)")
            )
            for mode, rates in solos.items():
                res.rows.append(
                    {
                        "trainer": what,
                        "run": f"alone, threads {mode}",
                        "threads": used[f"solo {mode}"],
                        "images/s": f"{median(rates):.1f}",
                        "vs alone (default)": f"{median(rates) / base:.2f}x",
                    }
                )
            for name, rates in aggs.items():
                res.rows.append(
                    {
                        "trainer": what,
                        "run": f"pair, {name}",
                        "threads": used[name],
                        "images/s": f"{median(rates):.1f}",
                        "vs alone (default)": f"{median(rates) / base:.2f}x",
                    }
                )
                res.values[f"{kind}_pair_{name}_ratio"] = median(rates) / base
            res.values[f"{kind}_solo_auto_ratio"] = median(solos["auto"]) / base
    res.notes.append(
        f"{seconds:.0f} s per run, {rounds} round(s), solo and pair alternating; "
        "images/s of a pair = sum of both processes while both ran; threads 2>1: the "
        "load follower changed the count during the run"
    )
    return res
