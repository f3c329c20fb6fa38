"""``mrict export-nnunet``."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def export_nnunet_command(
    source_folder: Path = typer.Argument(
        ..., metavar="STUDY_OR_DATA", help="Data set folder, or a study folder (study.json)."
    ),
    out: Path = typer.Argument(
        ...,
        metavar="OUT",
        help="nnU-Net raw folder (nnUNet_raw); DatasetNNN_Name is created in it.",
    ),
    target: str = typer.Option(..., "--target", help="CT or MR: the modality to segment."),
    source: str = typer.Option(
        "both", "--source", help="real, translated (through the CycleGAN) or both."
    ),
    gan: Path | None = typer.Option(
        None, "--gan", help="CycleGAN run for translated cases (default: the study's)."
    ),
    dataset_id: int = typer.Option(501, "--dataset-id", help="nnU-Net dataset id, 1..999."),
    name: str | None = typer.Option(
        None, "--name", help="Dataset name (default Mrict<TARGET><Source>)."
    ),
    split: str = typer.Option("train", "--split", help="train (train-split patients only) or all."),
    seed: int | None = typer.Option(
        None, "--seed", help="Patient split seed (default: the study's or CycleGAN run's, else 0)."
    ),
    device: str = typer.Option("cpu", "--device", help="Generator device: auto, cpu, cuda."),
    batch_size: int = typer.Option(8, "--batch-size", help="Slices per generator pass."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing non-empty DatasetNNN_Name folder."
    ),
) -> None:
    """Write an nnU-Net v2 raw data set (imagesTr, labelsTr, dataset.json) of labelled real
    and/or translated slices, one 2-D case per slice, so nnU-Net can train on them."""
    from mrict.data.nnunet import export_nnunet

    folder = export_nnunet(
        source_folder,
        out,
        target=target,
        source=source.lower(),
        gan=gan,
        dataset_id=dataset_id,
        name=name,
        split=split.lower(),
        seed=seed,
        overwrite=overwrite,
        device=device,
        batch_size=batch_size,
    )
    info = json.loads((folder / "dataset.json").read_text("utf-8"))
    m = info["mrict"]
    typer.echo(
        f"nnU-Net data set written to {folder}: {info['numTraining']} cases "
        f"({m['real_cases']} real, {m['translated_cases']} translated; {m['split']} split)"
    )


def register(app: typer.Typer) -> None:
    app.command("export-nnunet")(export_nnunet_command)
