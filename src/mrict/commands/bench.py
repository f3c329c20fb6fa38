"""``mrict bench``: the benchmark suite of a source checkout (``bench/``)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from mrict.errors import MrictError


def _bench_root() -> Path:
    """The checkout holding ``bench/`` (next to ``src/``), put on ``sys.path``."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "bench" / "__init__.py").is_file():
        raise MrictError(
            "benchmark suite not found (it ships with a source checkout)", root / "bench"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def bench_command(
    quick: bool = typer.Option(False, "--quick", help="Small settings (a few minutes)."),
    only: list[str] = typer.Option(
        [],
        "--only",
        help="Run only this benchmark (repeatable): cyclegan, inference, segmentation, "
        "data, scaling, threads, quality, time_to_quality, stages_under_load "
        "(the last three run only when named).",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Results file to append to (default bench/RESULTS.md)."
    ),
    no_write: bool = typer.Option(False, "--no-write", help="Print only, append nothing."),
    device: str = typer.Option("cpu", "--device", help="Torch device: cpu, cuda, cuda:N."),
    seed: int = typer.Option(0, "--seed", help="Random seed (data, weights, batches)."),
    note: str = typer.Option("", "--note", help="Free text stored with the run."),
    tiny: bool = typer.Option(False, "--tiny", hidden=True, help="Smallest sizes (tests)."),
) -> None:
    """Benchmark training, inference, segmentation, data and scaling against plain
    references; append the tables, machine, versions and date to bench/RESULTS.md."""
    _bench_root()
    from bench import BENCHMARKS, RESULTS, run_suite
    from bench.common import Settings

    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise MrictError(
            f"unknown benchmark {', '.join(unknown)} (choose from {', '.join(BENCHMARKS)})"
        )
    if device != "cpu":
        from mrict.runtime.device import pick_device

        device = str(pick_device(device))
    target = None if no_write else (out or RESULTS)
    if target is not None and target.exists() and target.is_dir():
        raise MrictError("results file is a folder", target)
    run_suite(
        Settings(quick=quick, device=device, seed=seed, tiny=tiny),
        names or None,
        target,
        True,
        note,
        echo=typer.echo,
    )


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
