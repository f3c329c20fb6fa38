"""mrict benchmark suite: ``python -m bench`` or ``mrict bench``.

Each benchmark is a module with ``run(settings) -> Result``; the suite runs each one in its
own process (so peak resident memory is per benchmark), prints its table and appends every
table, with the machine, versions and date, to ``bench/RESULTS.md``. Nothing here passes or
fails on time.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench.common import Result, Settings, machine_info, markdown_table, peak_rss_mb

#: name -> module; the default suite runs them in this order
BENCHMARKS: dict[str, str] = {
    "cyclegan": "bench.cyclegan_step",
    "inference": "bench.inference",
    "segmentation": "bench.segmentation_step",
    "data": "bench.data_io",
    "scaling": "bench.scaling",
    "threads": "bench.threads",
    "quality": "bench.quality",
    "time_to_quality": "bench.time_to_quality",
    "stages_under_load": "bench.stages_under_load",
}
#: run only when asked for by name (they train models for minutes)
OPTIONAL = frozenset({"quality", "time_to_quality", "stages_under_load"})
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
REPO = Path(__file__).resolve().parents[1]


def run_one(name: str, settings: Settings) -> Result:
    """Run one benchmark in this process; its wall time and this process's peak RSS are
    recorded in the result."""
    if name not in BENCHMARKS:
        raise KeyError(name)
    module = importlib.import_module(BENCHMARKS[name])
    t0 = time.perf_counter()
    result: Result = module.run(settings)
    result.wall_s = time.perf_counter() - t0
    result.peak_rss_mb = peak_rss_mb()
    return result


def run_isolated(name: str, settings: Settings, timeout: float = 1800) -> Result:
    """Run one benchmark in a fresh Python process (per-benchmark peak RSS, no state shared
    with the others)."""
    with tempfile.TemporaryDirectory(prefix="mrict-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            "bench.worker",
            name,
            json.dumps(dataclasses.asdict(settings)),
            str(out),
        ]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p
            ),
        }
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
            return failed(name, " / ".join(tail) or f"exit code {proc.returncode}")
        return Result.from_dict(json.loads(out.read_text()))


def _flushing(echo: Callable[[str], None]) -> Callable[[str], None]:
    def out(message: str) -> None:
        echo(message)
        sys.stdout.flush()

    return out


def failed(name: str, message: str) -> Result:
    return Result(name, f"{name}: FAILED", notes=[f"error: {message}"], values={"error": message})


def render(results: list[Result], info: dict[str, str], settings: Settings, note: str = "") -> str:
    """Markdown section for RESULTS.md: header, machine, then each benchmark's table."""
    mode = "tiny" if settings.tiny else ("quick" if settings.quick else "full")
    lines = [f"## Run {info['date']} ({mode}, device {settings.device})", ""]
    lines += [f"- {k}: {v}" for k, v in info.items() if k != "date"]
    if note:
        lines.append(f"- note: {note}")
    lines.append("")
    for r in results:
        lines += [f"### {r.title}", ""]
        table = markdown_table(r.rows)
        if table:
            lines += [table, ""]
        lines += [f"- {n}" for n in r.notes]
        lines.append(f"- wall time {r.wall_s:.1f} s, peak resident memory {r.peak_rss_mb:.0f} MiB")
        lines.append("")
    return "\n".join(lines) + "\n"


def append_results(path: Path, text: str) -> None:
    """Append a run's section to the results file (created with a title if missing)."""
    from mrict.runtime.atomic import atomic_write_text

    old = path.read_text() if path.is_file() else "# mrict benchmark results\n\n"
    atomic_write_text(path, old.rstrip("\n") + "\n\n" + text)


def run_suite(
    settings: Settings,
    only: list[str] | None = None,
    out: Path | None = RESULTS,
    isolate: bool = True,
    note: str = "",
    echo: Callable[[str], None] = print,
) -> list[Result]:
    """Run the selected benchmarks (default: all but the optional ones), print each table
    and append the run to ``out`` (None: don't write). A benchmark that crashes is reported
    as FAILED and the others still run."""
    names = list(only) if only else [n for n in BENCHMARKS if n not in OPTIONAL]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise KeyError(", ".join(unknown))
    info = machine_info(settings.device)
    mode = "tiny" if settings.tiny else ("quick" if settings.quick else "full")
    load = info["load average at start (1/5/15 min)"]
    echo(f"mrict bench: {', '.join(names)} on {settings.device} ({mode}); load {load}")
    echo = _flushing(echo)
    results = []
    # benchmarks build their own data sets: keep their prepared-slice cache out of the
    # user's cache folder (data_io measures the cache in a folder of its own)
    saved_cache = os.environ.get("MRICT_CACHE_DIR")
    cache_tmp = tempfile.TemporaryDirectory(prefix="mrict-bench-cache-")
    os.environ["MRICT_CACHE_DIR"] = cache_tmp.name
    try:
        results = _run_all(names, settings, isolate, echo)
    finally:
        cache_tmp.cleanup()
        if saved_cache is None:
            os.environ.pop("MRICT_CACHE_DIR", None)
        else:
            os.environ["MRICT_CACHE_DIR"] = saved_cache
    if out is not None:
        append_results(Path(out), render(results, info, settings, note))
        echo(f"results appended to {out}")
    return results


def _run_all(
    names: list[str], settings: Settings, isolate: bool, echo: Callable[[str], None]
) -> list[Result]:
    results = []
    for name in names:
        echo(f"-- {name} ...")
        if isolate:
            r = run_isolated(name, settings)
        else:
            try:
                r = run_one(name, settings)
            except Exception as exc:  # keep going; the failure is reported in the table
                traceback.print_exc()
                r = failed(name, f"{exc.__class__.__name__}: {exc}")
        results.append(r)
        echo(markdown_table(r.rows) or "\n".join(r.notes))
        echo(f"   ({r.wall_s:.1f} s, peak RSS {r.peak_rss_mb:.0f} MiB)")
    return results
