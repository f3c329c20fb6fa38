"""``mrict inspect``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mrict.errors import MrictError


def inspect_command(
    data: Path = typer.Argument(
        ..., help="Data set folder (MR/image_MR, CT/image_CT, ... see README)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Report bad files as warnings and exit 0 instead of failing."
    ),
    mask_threshold: float | None = typer.Option(
        None, "--mask-threshold", help="Binarise masks as value > T (for masks that are not 0/1)."
    ),
) -> None:
    """Summarise a data set per modality (patients, slices, labels, sizes, intensity range in
    HU for CT, mask positive fraction) and list every problem found."""
    from rich.console import Console
    from rich.table import Table

    from mrict.data.inspect import inspect_dataset

    report = inspect_dataset(data, mask_threshold)
    errors = [p for p in report["problems"] if p["severity"] == "error"]
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        console = Console()
        table = Table(title=f"mrict data set: {report['root']}")
        for col in (
            "modality",
            "patients",
            "slices",
            "labelled",
            "sizes",
            "intensity range",
            "mask +",
        ):
            table.add_column(col)
        for modality, s in report["modalities"].items():
            rng = (
                "-"
                if s["intensity_min"] is None
                else f"{s['intensity_min']:.0f} .. {s['intensity_max']:.0f} {s['intensity_unit']}"
            )
            frac = (
                "-"
                if s["mask_positive_fraction"] is None
                else f"{100 * s['mask_positive_fraction']:.2f}%"
            )
            sizes = ", ".join(f"{k} ({v})" for k, v in sorted(s["sizes"].items()))
            table.add_row(
                modality,
                str(s["patients"]),
                str(s["slices"]),
                str(s["labelled_slices"]),
                sizes,
                rng,
                frac,
            )
        console.print(table)
        for p in report["problems"]:
            colour = "red" if p["severity"] == "error" else "yellow"
            console.print(
                f"[{colour}]{p['severity']}[/]: {p['file']}: {p['problem']}", highlight=False
            )
    if errors and not skip_bad:
        first = errors[0]
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise MrictError(first["problem"] + more, first["file"])


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_command)
