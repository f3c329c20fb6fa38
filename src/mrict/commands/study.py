"""``mrict study`` (the baseline-vs-synthetic experiment) and ``mrict demo``."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from mrict.errors import MrictError
from mrict.study.translator import DEFAULT_TRANSLATOR_TRIES

#: the built-in data set of ``mrict demo``: 100 + 100 unpaired patients (the 70/15/15
#: patient split leaves 15 test patients per modality, enough for paired tests with power),
#: 4 paired validation patients (translation checkpoint selection) and 6 paired test patients
DEMO_DATA = {
    "mri_patients": 100,
    "ct_patients": 100,
    "test_patients": 6,
    "val_patients": 4,
    "slices_per_patient": 6,
    "size": 128,
    "fmt": "png",
}
#: the demo's seeds and label fractions (the study defaults)
DEMO_SEEDS = 3
DEMO_FRACTIONS = (1.0, 0.25, 0.1)


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise MrictError(f"--label-fraction: expected numbers like 1.0,0.25, got {text!r}") from exc
    if not values:
        raise MrictError("--label-fraction: give at least one fraction")
    return values


WORKERS_HELP = (
    "Processes training segmenters side by side, each with an equal share of the CPU "
    "threads: a number, or auto (2 on a CPU with 2+ threads, 1 on a GPU). Results depend on "
    "the threads each process gets: give the same --workers (and --threads) to reproduce."
)


def study_command(
    data: Path = typer.Argument(..., help="Data set folder (MR/ and CT/ with masks)."),
    out: Path = typer.Option(..., "--out", help="Study folder (results, figures, report)."),
    preset: str = typer.Option("quick", "--preset", help="quick or paper."),
    seeds: int | None = typer.Option(
        None, "--seeds", help="Number of segmenter training seeds (default: 3 quick, 5 paper)."
    ),
    label_fraction: str = typer.Option(
        "1.0,0.25,0.1", "--label-fraction", help="Target label fractions, comma-separated."
    ),
    gan_run: Path | None = typer.Option(None, "--gan-run", help="Reuse a trained CycleGAN run."),
    seed: int = typer.Option(0, "--seed", help="First seed (CycleGAN and segmenters)."),
    iterations: int | None = typer.Option(
        None, "--seg-iterations", help="Override U-Net iterations."
    ),
    gan_iterations: int | None = typer.Option(
        None, "--gan-iterations", help="Override CycleGAN iterations."
    ),
    translator_target_masks: bool = typer.Option(
        False,
        "--translator-target-masks/--translator-source-masks",
        help="Let the CycleGAN's tumour-aware terms also use the target modality's train "
        "masks (then scenarios (3) and (5) use target labels through the translator); by "
        "default each direction uses only its source masks.",
    ),
    translator_tries: int = typer.Option(
        DEFAULT_TRANSLATOR_TRIES,
        "--translator-tries",
        help="CycleGANs trained at most (seeds SEED, SEED+1, ...) until one carries the "
        "tumour across on DATA/paired_val (translated tumour-to-brain contrast at least a "
        "quarter of the real one, both directions); the report records every attempt. "
        "Without DATA/paired_val the check is skipped.",
    ),
    seg_config: Path | None = typer.Option(
        None,
        "--seg-config",
        help="YAML file of segmentation options (SegConfig: ct_window, schedule, "
        "real_fraction, patience, ...) applied over the preset.",
    ),
    workers: str = typer.Option("auto", "--workers", metavar="N|auto", help=WORKERS_HELP),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Write into a non-empty folder that holds no study (a study folder is always "
        "continued: finished runs are kept).",
    ),
) -> None:
    """Segmenters trained with and without translated data, scored on the same test patients."""
    from mrict.study.run import run_study

    if seeds is not None and seeds < 1:
        raise MrictError("--seeds must be at least 1")
    if translator_tries < 1:
        raise MrictError("--translator-tries must be at least 1")
    t0 = time.time()
    study = run_study(
        data,
        out,
        preset=preset,
        seeds=range(seed, seed + seeds) if seeds is not None else None,
        label_fractions=_fractions(label_fraction),
        gan_run=gan_run,
        seed=seed,
        seg_overrides={"iterations": iterations},
        gan_overrides={
            "use_target_masks": translator_target_masks,
            **({"iterations": gan_iterations} if gan_iterations else {}),
        },
        seg_config=seg_config,
        overwrite=overwrite,
        workers=workers,
        translator_tries=translator_tries,
    )
    typer.echo(f"study finished in {time.time() - t0:.0f} s; report: {study / 'report.html'}")


def demo_command(
    out: Path = typer.Option(Path("mrict-demo"), "--out", help="Demo folder."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    workers: str = typer.Option("auto", "--workers", metavar="N|auto", help=WORKERS_HELP),
) -> None:
    """Simulate the built-in data set, run the quick study, print where the report is."""
    from mrict.phantom.simulate import simulate_dataset
    from mrict.study.run import run_study

    t0 = time.time()
    data = out / "data"
    if not (data / "manifest.json").is_file():
        typer.echo(f"simulating the built-in data set -> {data}", err=True)
        simulate_dataset(data, seed=seed, **DEMO_DATA)
    study = run_study(
        data,
        out / "study",
        preset="quick",
        seeds=range(seed, seed + DEMO_SEEDS),
        label_fractions=DEMO_FRACTIONS,
        seed=seed,
        workers=workers,
    )
    typer.echo(f"demo finished in {time.time() - t0:.0f} s")
    typer.echo(f"report: {(study / 'report.html').resolve()}")


def report_command(
    study: Path = typer.Argument(..., help="A finished study folder (holding results.json)."),
) -> None:
    """Rebuild STUDY/report.html and the results figures from STUDY/results.json alone (no
    training); figures drawn from the study's models are reused from STUDY/figures/."""
    from mrict.report.rebuild import rebuild_report

    typer.echo(f"report: {rebuild_report(study)}")


def register(app: typer.Typer) -> None:
    app.command("study")(study_command)
    app.command("report")(report_command)
    app.command("demo")(demo_command)
