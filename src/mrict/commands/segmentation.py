"""``mrict train-seg``, ``mrict segment`` and ``mrict evaluate``."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import typer

from mrict.commands import EVALUATION_SEED_HELP, INFERENCE_SEED_HELP
from mrict.errors import MrictError


def _modality(value: str) -> str:
    value = value.upper()
    if value not in ("CT", "MR", "MRI"):
        raise MrictError(f"unknown modality {value!r} (use CT or MR)")
    return "MR" if value == "MRI" else value


def _resume_command(
    data: Path,
    mod: str,
    out: Path,
    seed: int,
    label_fraction: float,
    extra: list[Path],
    init: Path | None = None,
) -> str:
    """The exact ``mrict train-seg ... --resume`` line that continues this run."""
    parts = ["mrict train-seg", shlex.quote(str(data)), "--modality", mod]
    parts += ["--out", shlex.quote(str(out)), "--seed", str(seed)]
    if label_fraction != 1.0:
        parts += ["--label-fraction", f"{label_fraction:g}"]
    for folder in extra:
        parts += ["--extra", shlex.quote(str(folder))]
    if init is not None:
        parts += ["--init", shlex.quote(str(init))]
    return " ".join([*parts, "--resume"])


def train_seg_command(
    data: Path = typer.Argument(..., help="Data set folder (DATA/CT/image_CT ... layout)."),
    modality: str = typer.Option(..., "--modality", help="CT or MR."),
    out: Path = typer.Option(..., "--out", help="Run folder to create."),
    extra: list[Path] = typer.Option(
        [],
        "--extra",
        help="Extra labelled data sets (e.g. translated images) in the same modality, mixed "
        "into every batch as the config's schedule and real_fraction say.",
    ),
    init: Path | None = typer.Option(
        None, "--init", help="Start from this trained segmenter's weights (fine-tuning)."
    ),
    label_fraction: float = typer.Option(
        1.0, "--label-fraction", help="Fraction of the train patients whose masks are used."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    preset: str | None = typer.Option(None, "--preset", help="quick or paper. Default quick."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of SegConfig options."),
    iterations: int | None = typer.Option(None, "--iterations", help="Override iterations."),
    image_size: int | None = typer.Option(None, "--image-size", help="Override image size."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the interrupted run in --out exactly."
    ),
) -> None:
    """Train a U-Net on DATA's train split, selected on its validation split."""
    from mrict.config import resolve_config, save_config
    from mrict.data.datasets import load_modality
    from mrict.data.splits import split_patients
    from mrict.segmentation.config import SEG_PRESETS, SegConfig
    from mrict.segmentation.run_folder import check_run_folder
    from mrict.segmentation.trainer import train_segmenter
    from mrict.study.scenarios import label_subset

    mod = _modality(modality)
    overrides = {"iterations": iterations, "image_size": image_size, "device": device}
    saved = out / "config.yaml"
    if resume and preset is None and config is None and saved.is_file():
        cfg = resolve_config(SegConfig, None, None, saved, overrides)
    else:
        cfg = resolve_config(SegConfig, SEG_PRESETS, preset or "quick", config, overrides)
    if not 0.0 < label_fraction <= 1.0:
        raise MrictError(f"--label-fraction must be in (0, 1], got {label_fraction}")
    if not check_run_folder(out, resume) and resume:
        typer.echo("no checkpoint was saved yet: training starts from the beginning", err=True)
    full = load_modality(data, mod, size=cfg.image_size)
    splits = split_patients(full.patients(), seed=cfg.split_seed)
    train = label_subset(full.select(splits["train"]), label_fraction, cfg.split_seed)
    extra_sets = [load_modality(folder, mod, size=cfg.image_size) for folder in extra]
    command = _resume_command(data, mod, out, seed, label_fraction, extra, init)
    val = full.select(splits["val"])
    if extra_sets and cfg.schedule == "pretrain_finetune" and init is None:
        # pre-train on the extra data (OUT/pretrain, selected on the val split), then
        # fine-tune that segmenter on the train split below
        init = out / "pretrain"
        if not (init / "model.json").is_file():
            save_config(cfg, out / "config.yaml")  # marks OUT as a run for --resume
            train_segmenter(
                extra_sets,
                val,
                init,
                dataclasses.replace(cfg, schedule="mixed"),
                seed,
                title=f"U-Net {mod} (pre-training on --extra)",
                resume=resume and (init / "checkpoint.json").is_file(),
                resume_command=command,
            )
        extra_sets = []
    run = train_segmenter(
        train,
        val,
        out,
        cfg,
        seed,
        extra=extra_sets or None,
        init=init,
        title=f"U-Net {mod}",
        resume=resume and (out / "checkpoint.json").is_file(),
        resume_command=command,
    )
    typer.echo(f"segmenter written to {run}")


def segment_command(
    run: Path = typer.Argument(..., help="Segmentation run folder (from train-seg)."),
    input: Path = typer.Argument(..., help="Image file, DICOM series or folder of images."),
    output: Path = typer.Argument(..., help="Output folder for the masks."),
    seed: int = typer.Option(0, "--seed", help=INFERENCE_SEED_HELP),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Write into a non-empty output folder (inputs are never touched).",
    ),
    seg_all_frames: bool = typer.Option(
        False,
        "--seg-all-frames",
        help="DICOM input: keep a SEG frame for every source slice, empty ones too "
        "(default: frames without tumour are omitted).",
    ),
) -> None:
    """Write tumour masks for INPUT: a DICOM Segmentation (SEG) per DICOM series, else
    masks in the input's format (NIfTI 0/1, PNG 0/255)."""
    from mrict.runtime.outputs import prepare_output_dir
    from mrict.runtime.seed import seed_everything
    from mrict.segmentation.predict import segment_path

    if not input.exists():
        raise MrictError("input not found", input)
    if not (run / "model.json").is_file():
        raise MrictError("no trained segmenter in this folder (model.json)", run)
    # the masks never land in, over or around the images or the model they come from
    prepare_output_dir(output, inputs=[input, run], overwrite=overwrite)
    seed_everything(seed)
    written = segment_path(run, input, output, seg_all_frames=seg_all_frames)
    typer.echo(f"{len(written)} mask file(s) written to {output}")


def evaluate_command(
    run: Path = typer.Argument(..., help="Segmentation run folder."),
    data: Path = typer.Argument(..., help="Data set with masks."),
    split: str = typer.Option("test", "--split", help="test, val, train or all."),
    modality: str | None = typer.Option(None, "--modality", help="Default: the run's."),
    json_out: Path | None = typer.Option(None, "--json", help="Write all metrics here."),
    seed: int = typer.Option(0, "--seed", help=EVALUATION_SEED_HELP),
) -> None:
    """Dice, IoU and HD95 per slice and per patient (empty-mask policy printed)."""
    from mrict.runtime.atomic import atomic_write_text
    from mrict.runtime.seed import seed_everything
    from mrict.segmentation.evaluate import evaluate_run

    seed_everything(seed)
    result = evaluate_run(
        run, data, split=split, modality=_modality(modality) if modality else None
    )
    s = result["summary"]
    typer.echo(
        f"{s['modality']} {s['split']} split: {s['n_patients']} patients, {s['n_slices']} slices"
    )
    typer.echo("patient   dice    iou     hd95(px)  slices")
    for p in result["patients"]:
        typer.echo(
            f"{p['patient']:<9} {p['dice']:.4f}  {p['iou']:.4f}  {p['hd95']:8.2f}  {p['slices']}"
        )
    typer.echo(
        f"per patient: Dice {s['patient_dice']:.4f}  IoU {s['patient_iou']:.4f}  "
        f"HD95 {s['patient_hd95']:.2f} px"
    )
    typer.echo(
        f"per slice:   Dice {s['slice_dice']:.4f}  IoU {s['slice_iou']:.4f}  "
        f"HD95 {s['slice_hd95']:.2f} px"
    )
    typer.echo(
        f"slices with empty ground truth and empty prediction: {s['both_empty']} (excluded); "
        f"exactly one empty: {s['hd95_one_empty']}; patients both empty: {s['patients_both_empty']}"
    )
    typer.echo(f"policy: {s['policy']}")
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(result, indent=1, default=float))
        typer.echo(f"metrics written to {json_out}")


def register(app: typer.Typer) -> None:
    app.command("train-seg")(train_seg_command)
    app.command("segment")(segment_command)
    app.command("evaluate")(evaluate_command)
