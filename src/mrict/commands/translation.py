"""``mrict train-gan``, ``mrict translate``, ``mrict eval-translation``, ``mrict export``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mrict.commands import EVALUATION_SEED_HELP, INFERENCE_SEED_HELP
from mrict.errors import MrictError


def train_gan_command(
    data: Path = typer.Argument(..., help="Data set folder (MR/image_MR and CT/image_CT)."),
    out: Path = typer.Option(..., "--out", help="Run folder for checkpoints, logs and samples."),
    preset: str | None = typer.Option(
        None, "--preset", help="quick (CPU demo) or paper. Default quick."
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML file of config values."),
    epochs: int | None = typer.Option(None, "--epochs", help="Train for N epochs."),
    iterations: int | None = typer.Option(None, "--iterations", help="Train for N steps."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (default 0)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly."),
    compile_: bool | None = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the networks."
    ),
    precision: str | None = typer.Option(
        None, "--precision", help="auto, fp32, bf16 or fp16 (GPU)."
    ),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    feature_weights_allow_pickle: bool | None = typer.Option(
        None,
        "--feature-weights-allow-pickle",
        help="Let a .pth/.pt feature_weights file be read (torch.load(weights_only=True)); "
        "by default only safetensors are read.",
    ),
) -> None:
    """Train the CycleGAN (MRI <-> CT) on the unlabelled train split of both modalities.
    Several GPUs or nodes: launch through ``torchrun`` with the same arguments."""
    from mrict.config import resolve_config
    from mrict.translation.config import GAN_PRESETS, GanConfig
    from mrict.translation.trainer import train_cyclegan

    if epochs is not None and iterations is not None:
        raise MrictError("give either --epochs or --iterations, not both")
    overrides = {
        "seed": seed,
        "compile": compile_,
        "precision": precision,
        "device": device,
        "iterations": iterations,
        "feature_weights_allow_pickle": feature_weights_allow_pickle,
    }
    if epochs is not None:
        overrides.update(epochs=epochs, iterations=0)
    saved = out / "config.yaml"
    if resume and preset is None and config is None and saved.is_file():
        cfg = resolve_config(GanConfig, None, None, saved, overrides)
    else:
        cfg = resolve_config(GanConfig, GAN_PRESETS, preset or "quick", config, overrides)
    run = train_cyclegan(data, out, cfg, resume=resume)
    from mrict.runtime.distributed import env_info

    if env_info().is_main:
        typer.echo(f"trained generators: {run / 'generators.safetensors'}")
        _warn_if_tumour_lost(run)


def _warn_if_tumour_lost(run: Path) -> None:
    """Say on stderr when the selected generators lose the tumour on paired_val."""
    from mrict.translation.selection import CARRIED_MIN_RATIO, ratios_text
    from mrict.translation.translate import read_run_meta

    if not (run / "generators.json").is_file():
        return
    sel = read_run_meta(run).get("selection") or {}
    if sel.get("carried") is False:
        typer.echo(
            "warning: on paired_val no checkpoint of this run carries the tumour across "
            f"({ratios_text(sel)}; at least {CARRIED_MIN_RATIO:g} in both directions "
            "expected): its translations lose or invert the lesion. Train again with "
            "another --seed (see RUN/selection.csv).",
            err=True,
        )


def translate_command(
    run: Path = typer.Argument(..., help="Run folder of train-gan."),
    input_path: Path = typer.Argument(..., help="Image file, folder of images, or data set."),
    output: Path = typer.Argument(
        ..., help="Output folder (created; inputs are never overwritten)."
    ),
    direction: str = typer.Option(..., "--direction", help="mr2ct or ct2mr."),
    batch_size: int = typer.Option(8, "--batch-size", help="Slices per forward pass."),
    device: str = typer.Option("cpu", "--device", help="auto, cpu, cuda or cuda:N."),
    seed: int = typer.Option(0, "--seed", help=INFERENCE_SEED_HELP),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Write into a non-empty output folder (inputs are never touched).",
    ),
    precision: str = typer.Option(
        "fp32", "--precision", help="fp32 (exact), bf16, fp16 (GPU) or auto (bf16 where fast)."
    ),
    anonymize: bool = typer.Option(
        False,
        "--anonymize",
        help="De-identify DICOM outputs (DICOM basic profile: pseudonymous patient id, "
        "no names, dates or institution, new UIDs). Set MRICT_ANON_SALT for stable pseudonyms.",
    ),
) -> None:
    """Translate MRI to CT (HU) or CT to MRI, writing the input's format (DICOM, NIfTI, PNG);
    masks of a data set are copied alongside."""
    from mrict.translation.translate import check_direction, translate_path

    check_direction(direction)
    written = translate_path(
        run,
        input_path,
        output,
        direction,
        batch_size=batch_size,
        device=device,
        overwrite=overwrite,
        anonymize=anonymize,
        precision=precision,
    )
    typer.echo(f"wrote {len(written)} file(s) to {output}")


def eval_translation_command(
    run: Path = typer.Argument(..., help="Run folder of train-gan."),
    data: Path = typer.Argument(
        ..., help="Data set with paired_test/{MR,CT,mask}, or a paired folder."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    batch_size: int = typer.Option(8, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
    seed: int = typer.Option(0, "--seed", help=EVALUATION_SEED_HELP),
    paired_split: str = typer.Option(
        "test", "--paired-split", help="Paired folder DATA/paired_<split>: test or val."
    ),
    segmenter_ct: Path | None = typer.Option(
        None,
        "--segmenter-ct",
        help="Segmentation run trained on real CT: its Dice on labelled MR slices translated "
        "to CT, against the MR masks (DATA must be the data set folder).",
    ),
    segmenter_mr: Path | None = typer.Option(
        None,
        "--segmenter-mr",
        help="Segmentation run trained on real MRI: its Dice on labelled CT slices translated "
        "to MRI, against the CT masks.",
    ),
    segmenter_split: str = typer.Option(
        "val",
        "--segmenter-split",
        help="Source patients for the segmenter Dice: val (for choosing) or test (reporting).",
    ),
) -> None:
    """Score a run against ground truth (MAE HU, PSNR, SSIM; SynthRAD window) and at the
    lesion (tumour, brain, bone MAE; tumour contrast; texture) next to the identity and
    histogram-matching baselines; unpaired data gives cycle/structure scores, and
    --segmenter-ct/--segmenter-mr a real-target segmenter's Dice on translated slices."""
    from mrict.translation.evaluate import METHODS, evaluate_translation
    from mrict.translation.lesion_metrics import lesion_table, segmenter_table

    segmenters = {k: v for k, v in (("CT", segmenter_ct), ("MR", segmenter_mr)) if v is not None}
    result = evaluate_translation(
        run,
        data,
        batch_size=batch_size,
        device=device,
        paired_split=paired_split,
        segmenters=segmenters or None,
        segmenter_split=segmenter_split,
    )
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    source = "final generators" if result["generators_from"] == "final" else "latest checkpoint"
    sel = result.get("selection") or {}
    if sel.get("on") and sel.get("score") is not None:
        source = f"generators selected on {sel['on']} at iteration {sel['iteration']}"
    console.print(f"run {result['run']}: {source}, {result['iterations']} iterations trained")
    if "mr2ct" in result:
        for direction, keys in (
            ("mr2ct", ("mae_hu", "psnr", "ssim")),
            ("ct2mr", ("mae", "psnr", "ssim")),
        ):
            label = (
                "MR -> CT (HU window [-1024, 3000])"
                if direction == "mr2ct"
                else "CT -> MR (normalised)"
            )
            split = f" {result['paired_split']}" if result.get("paired_split") else ""
            table = Table(title=f"{label}, {result['n_slices']} paired{split} slices")
            table.add_column("method")
            for k in keys:
                table.add_column(k)
            for method in METHODS:
                row = result[direction][method]
                table.add_row(
                    method, *(f"{row[k]:.4f}" if k != "mae_hu" else f"{row[k]:.1f}" for k in keys)
                )
            console.print(table)
        lesion = result.get("lesion")
        for direction, modality, label in (
            ("mr2ct", "CT", "MR -> CT lesion-level (HU)"),
            ("ct2mr", "MR", "CT -> MR lesion-level (MAE in [0, 1], others in [-1, 1] units)"),
        ):
            if not lesion:
                break
            header, rows = lesion_table(lesion[direction], modality)
            table = Table(title=label)
            for col in header:
                table.add_column(col)
            for r in rows:
                table.add_row(*r)
            console.print(table)
        if lesion and not lesion.get("tumour_masks"):
            console.print("no mask/ folder next to the paired images: tumour figures are n/a")
    for direction, entry in (result.get("segmenter_dice") or {}).items():
        if direction not in ("mr2ct", "ct2mr"):
            continue
        header, rows = segmenter_table(entry)
        split = result["segmenter_dice"]["split"]
        table = Table(title=f"{entry['label']}, {split} split")
        for col in header:
            table.add_column(col)
        for r in rows:
            table.add_row(*r)
        console.print(table)
    table = Table(title="unpaired scores (consistency and structure, NOT fidelity)")
    for col in ("direction", "cycle_psnr", "cycle_ssim", "mind_similarity", "edge_correlation"):
        table.add_column(col)
    for direction, row in result["unpaired_not_fidelity"].items():
        table.add_row(
            direction,
            *(
                f"{row[k]:.4f}"
                for k in ("cycle_psnr", "cycle_ssim", "mind_similarity", "edge_correlation")
            ),
        )
    console.print(table)


def export_command(
    run: Path = typer.Argument(..., help="Run folder of train-gan."),
    onnx: bool = typer.Option(False, "--onnx", help="Export both generators to ONNX."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default RUN/onnx)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random parity-check inputs."),
) -> None:
    """Export the generators (ONNX) and check onnxruntime matches PyTorch."""
    if not onnx:
        raise MrictError("choose an export format: --onnx")
    from mrict.translation.export import export_onnx

    for name, info in export_onnx(run, out, seed=seed).items():
        typer.echo(
            f"{name}: {info['path']} (max |onnxruntime - torch| = {info['max_abs_diff']:.1e})"
        )


def register(app: typer.Typer) -> None:
    """Add the translation commands to ``app``."""
    app.command("train-gan")(train_gan_command)
    app.command("translate")(translate_command)
    app.command("eval-translation")(eval_translation_command)
    app.command("export")(export_command)
