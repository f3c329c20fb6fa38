"""``mrict simulate``."""

from __future__ import annotations

from pathlib import Path

import typer


def simulate_command(
    out: Path = typer.Argument(..., help="Output folder for the data set."),
    mri_patients: int = typer.Option(20, "--mri-patients", help="MRI-only patients (unpaired)."),
    ct_patients: int = typer.Option(20, "--ct-patients", help="CT-only patients (unpaired)."),
    test_patients: int = typer.Option(
        6, "--test-patients", help="Paired test patients (both modalities)."
    ),
    val_patients: int = typer.Option(
        4,
        "--val-patients",
        help="Paired validation patients (both modalities, disjoint from the test patients; "
        "used to choose translation checkpoints).",
    ),
    slices_per_patient: int = typer.Option(
        8, "--slices-per-patient", help="Axial slices per patient (contiguous)."
    ),
    slice_spacing: float = typer.Option(
        3.0,
        "--slice-spacing",
        help="Distance between slice centres = slice thickness, mm (1-5; recorded in the "
        "manifest, DICOM SliceThickness/ImagePositionPatient and the NIfTI affine). The "
        "atlas spans 69 mm, so slices x spacing must fit in it.",
    ),
    size: int = typer.Option(256, "--size", help="Image size in pixels (square)."),
    seed: int = typer.Option(
        0, "--seed", help="Random seed; the same seed gives byte-identical files."
    ),
    fmt: str = typer.Option("dicom", "--format", help="dicom, nifti or png."),
    mr_contrast: str = typer.Option(
        "t1c",
        "--mr-contrast",
        help="MR contrast: t1c (T1-weighted after gadolinium), t1, t2 or flair.",
    ),
    tumour_free_fraction: float = typer.Option(
        0.2,
        "--tumour-free-fraction",
        help="Aimed-for fraction of each patient's slices that miss the lesion: the slab is "
        "placed to match (a lesion larger than the slab leaves fewer; a small one more).",
    ),
    ct_contrast: bool = typer.Option(
        True,
        "--ct-contrast/--no-ct-contrast",
        help="CT after iodinated contrast (solid tumour enhances, 60-95 HU; default) or non-contrast CT.",
    ),
    oedema_masks: bool = typer.Option(
        False, "--oedema-masks", help="Also write oedema masks (oedema_MR/, ...)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the data set in a non-empty OUT."
    ),
) -> None:
    """Render the built-in data set: unpaired MRI and CT brain slices with tumour masks from
    the shipped Colin27-derived atlas, plus paired validation and test sets with exact ground truth."""
    import time

    from mrict.phantom.simulate import simulate_dataset

    start = time.perf_counter()
    simulate_dataset(
        out,
        overwrite=overwrite,
        mri_patients=mri_patients,
        ct_patients=ct_patients,
        test_patients=test_patients,
        val_patients=val_patients,
        slices_per_patient=slices_per_patient,
        slice_spacing_mm=slice_spacing,
        size=size,
        seed=seed,
        fmt=fmt,
        mr_contrast=mr_contrast,
        tumour_free_fraction=tumour_free_fraction,
        oedema_masks=oedema_masks,
        ct_contrast=ct_contrast,
    )
    n = (mri_patients + ct_patients + 2 * (test_patients + val_patients)) * slices_per_patient
    typer.echo(
        f"wrote {n} slices to {out} in {time.perf_counter() - start:.1f} s (preview: {out / 'preview.png'})"
    )


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_command)
