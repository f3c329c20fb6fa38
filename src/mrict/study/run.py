"""``mrict study``: train one CycleGAN, translate the labelled source patients, train the four
scenarios' segmenters for every seed (and label fraction), score them all on the same target
test patients and write results, statistics, figures and the HTML report.

Study folder: ``study.json`` (marks the folder as a study), ``gan/`` (unless ``gan_run``
is given), ``runs/<TARGET>/<scenario>/seed<S>/``,
``results.csv`` (one row per target, scenario and label fraction), ``per_patient.csv``,
``results.json``, ``figures/*.png`` and ``report.html``. Segmenters already trained in the
folder are reused, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrict.config import config_to_dict, resolve_config
from mrict.data.datasets import SliceSet, load_modality
from mrict.data.geometry import resize_batch
from mrict.data.splits import check_disjoint, split_patients
from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_write_text
from mrict.runtime.outputs import check_not_input, check_writable
from mrict.segmentation.config import SEG_PRESETS, SegConfig
from mrict.segmentation.metrics import POLICY, evaluate_masks
from mrict.segmentation.predict import load_segmenter, predict_masks
from mrict.segmentation.trainer import train_segmenter
from mrict.study.scenarios import SCENARIOS, SELECTION, label_subset
from mrict.study.stats import mean_ci, paired_wilcoxon

MODALITIES = ("CT", "MR")
OTHER = {"CT": "MR", "MR": "CT"}
#: scenarios that use target labels (and so depend on the label fraction)
USES_TARGET_LABELS = ("target_only", "target_translated")
METRICS = ("dice", "iou", "hd95")
#: written first into every study folder: a later run recognises the folder as its own
STUDY_MARKER = "study.json"


def _log(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def translate_set(generator: Any, s: SliceSet, target: str, size: int) -> SliceSet:
    """Translate every image of ``s`` with ``generator`` (run at its training size) and
    return a ``target``-modality SliceSet at ``size`` with the source masks and patients."""
    from mrict.translation.translate import translate_array

    if len(s) == 0:
        return s
    gsize = int(getattr(generator, "image_size", size))
    fake = translate_array(generator, resize_batch(s.images, gsize))
    fake = np.clip(resize_batch(fake, size), -1.0, 1.0).astype(np.float32)
    return SliceSet(target, fake, s.masks.copy(), s.has_mask.copy(), list(s.patient_ids))


def _gan(
    data: Path,
    out: Path,
    preset: str,
    gan_run: Path | None,
    seed: int,
    progress: bool,
    gan_overrides: dict[str, Any] | None,
) -> tuple[Path, dict[str, Any]]:
    from mrict.translation.config import GAN_PRESETS, GanConfig
    from mrict.translation.trainer import train_cyclegan
    from mrict.translation.translate import read_run_meta

    if gan_run is not None:
        return gan_run, read_run_meta(gan_run)
    gan_dir = out / "gan"
    if not (gan_dir / "generators.json").is_file():
        cfg = resolve_config(
            GanConfig, GAN_PRESETS, preset, None, {"seed": seed, **(gan_overrides or {})}
        )
        _log(f"training the CycleGAN ({preset} preset) -> {gan_dir}")
        train_cyclegan(
            data, gan_dir, cfg, resume=(gan_dir / "checkpoint.json").is_file(), progress=progress
        )
    return gan_dir, read_run_meta(gan_dir)


def _per_patient_rows(
    target: str, scenario: str, fraction: float, seed: int, result: dict[str, Any]
) -> list[dict[str, Any]]:
    return [
        {
            "target": target,
            "scenario": scenario,
            "label_fraction": fraction,
            "seed": seed,
            "patient": p["patient"],
            "dice": p["dice"],
            "iou": p["iou"],
            "hd95": p["hd95"],
            "slices": p["slices"],
        }
        for p in result["patients"]
    ]


def _csv(rows: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary row per (target, scenario, label fraction): mean and 95% CI over seeds
    (of each seed's mean over patients) and over patients (of each patient's mean over seeds)."""
    keys = sorted(
        {(r["target"], r["scenario"], r["label_fraction"]) for r in rows},
        key=lambda k: (k[0], list(SCENARIOS).index(k[1]), -k[2]),
    )
    out = []
    for target, scenario, fraction in keys:
        sub = [
            r
            for r in rows
            if (r["target"], r["scenario"], r["label_fraction"]) == (target, scenario, fraction)
        ]
        seeds = sorted({r["seed"] for r in sub})
        patients = sorted({r["patient"] for r in sub})
        row: dict[str, Any] = {
            "target": target,
            "scenario": scenario,
            "label_fraction": fraction,
            "seeds": len(seeds),
            "patients": len(patients),
        }
        for m in METRICS:
            per_seed = [
                float(np.nanmean([r[m] for r in sub if r["seed"] == s]))
                if any(math.isfinite(r[m]) for r in sub if r["seed"] == s)
                else math.nan
                for s in seeds
            ]
            per_patient = [
                float(np.nanmean([r[m] for r in sub if r["patient"] == p]))
                if any(math.isfinite(r[m]) for r in sub if r["patient"] == p)
                else math.nan
                for p in patients
            ]
            cs, cp = mean_ci(per_seed), mean_ci(per_patient)
            row[f"{m}_mean"] = cs["mean"]
            row[f"{m}_ci_seeds_lo"], row[f"{m}_ci_seeds_hi"] = cs["lo"], cs["hi"]
            row[f"{m}_ci_patients_lo"], row[f"{m}_ci_patients_hi"] = cp["lo"], cp["hi"]
        out.append(row)
    return out


def patient_means(
    rows: list[dict[str, Any]], target: str, scenario: str, fraction: float
) -> dict[str, float]:
    """Per-patient Dice averaged over seeds for one (target, scenario, fraction)."""
    acc: dict[str, list[float]] = {}
    for r in rows:
        if (r["target"], r["scenario"], r["label_fraction"]) == (target, scenario, fraction):
            acc.setdefault(r["patient"], []).append(r["dice"])
    return {
        p: float(np.nanmean(v)) if any(math.isfinite(x) for x in v) else math.nan
        for p, v in acc.items()
    }


def comparisons(rows: list[dict[str, Any]], fractions: Sequence[float]) -> list[dict[str, Any]]:
    """Paired Wilcoxon signed-rank tests on per-patient Dice (mean over seeds): (4) vs (1) for
    every label fraction and (3) vs (2), for each target."""
    tests = []
    for target in sorted({r["target"] for r in rows}):
        pairs = [("target_translated", f, "target_only", f) for f in fractions]
        pairs.append(("translated", 0.0, "source_only", 0.0))
        for a, fa, b, fb in pairs:
            da, db = patient_means(rows, target, a, fa), patient_means(rows, target, b, fb)
            common = sorted(set(da) & set(db))
            if not common:
                continue
            res = paired_wilcoxon([da[p] for p in common], [db[p] for p in common])
            tests.append(
                {"target": target, "a": a, "b": b, "label_fraction": fa if fa else fb, **res}
            )
    return tests


def is_study_folder(out: Path) -> bool:
    """True when ``out`` holds an mrict study (finished or interrupted)."""
    marker = out / STUDY_MARKER
    if marker.is_file():
        try:
            return json.loads(marker.read_text("utf-8")).get("kind") == "mrict-study"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            return False
    # folders written before the marker existed
    return (out / "results.json").is_file() or (
        (out / "figures").is_dir() and ((out / "gan").is_dir() or (out / "runs").is_dir())
    )


def check_study_folder(out: Path, data: Path, overwrite: bool = False) -> None:
    """Refuse a study folder equal to, inside or containing ``data``, an existing file, a
    non-empty folder that is not an mrict study (unless ``overwrite``) and an unwritable
    folder, each with a one-line :class:`MrictError`, before any work is done."""
    check_not_input(out, [data])
    if out.exists() and not out.is_dir():
        raise MrictError("study output exists and is not a folder", out)
    if out.is_dir() and not overwrite and any(out.iterdir()) and not is_study_folder(out):
        raise MrictError(
            "study folder is not empty and holds no mrict study; choose another --out or "
            "pass --overwrite to write into it",
            out,
        )
    check_writable(out)


def run_study(
    data: str | Path,
    out: str | Path,
    *,
    preset: str = "quick",
    seeds: int | Sequence[int] = 3,
    label_fractions: Sequence[float] = (1.0, 0.25),
    gan_run: str | Path | None = None,
    seed: int = 0,
    seg_overrides: dict[str, Any] | None = None,
    gan_overrides: dict[str, Any] | None = None,
    targets: Sequence[str] = MODALITIES,
    progress: bool = True,
    on_stage: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> Path:
    """Run the whole study on ``data``; return the study folder (holding report.html).

    ``seeds``: a count (seeds ``seed, seed+1, ...``) or explicit seeds of the segmenter
    training. ``label_fractions``: fractions of the target train patients whose masks the
    target-label scenarios (1) and (4) may use. An existing study folder is continued
    (finished runs are kept); any other non-empty folder needs ``overwrite``.
    """
    t0 = time.time()
    data, out = Path(data), Path(out)
    if not data.is_dir():
        raise MrictError("data folder not found", data)
    check_study_folder(out, data, overwrite)
    seed_list = list(range(seed, seed + int(seeds))) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise MrictError("--seeds must be at least 1")
    fractions = sorted({float(f) for f in label_fractions}, reverse=True)
    if not fractions or any(not 0.0 < f <= 1.0 for f in fractions):
        raise MrictError(f"label fractions must be in (0, 1], got {list(label_fractions)}")
    cfg = resolve_config(SegConfig, SEG_PRESETS, preset, None, seg_overrides or {})
    out.mkdir(parents=True, exist_ok=True)
    if not (out / STUDY_MARKER).is_file():
        marker = {"kind": "mrict-study", "data": str(data.resolve()), "preset": preset}
        atomic_write_text(out / STUDY_MARKER, json.dumps(marker, indent=1))
    (out / "figures").mkdir(exist_ok=True)
    stage = on_stage or _log

    # 1. the CycleGAN, trained on the train split (split seed 0) only
    gan_dir, gan_meta = _gan(
        data, out, preset, Path(gan_run) if gan_run else None, seed, progress, gan_overrides
    )
    gan_split_seed = int(gan_meta.get("config", {}).get("split_seed", cfg.split_seed))
    if gan_split_seed != cfg.split_seed:
        raise MrictError(
            f"CycleGAN run used split seed {gan_split_seed}, the study uses {cfg.split_seed}; "
            "test patients could have been seen in training",
            gan_dir,
        )
    from mrict.translation.translate import load_generators

    gens = load_generators(gan_dir, cfg.device if cfg.device != "auto" else None)
    t_gan = time.time() - t0

    # 2. data and patient splits (the same split the CycleGAN used)
    stage("loading data")
    sets = {m: load_modality(data, m, size=cfg.image_size, progress=progress) for m in MODALITIES}
    splits = {m: split_patients(sets[m].patients(), seed=cfg.split_seed) for m in MODALITIES}
    for m in MODALITIES:
        check_disjoint(splits[m])
        if not splits[m]["test"] or not sets[m].select(splits[m]["test"]).labelled().images.size:
            raise MrictError(f"{m} has no labelled test patients (need at least 3 patients)", data)
    part = {m: {k: sets[m].select(v) for k, v in splits[m].items()} for m in MODALITIES}

    # 3. translate the labelled source train/val patients into each target modality
    stage("translating source patients")
    translated: dict[str, dict[str, SliceSet]] = {}
    for target in targets:
        src = OTHER[target]
        key = "mr2ct" if src == "MR" else "ct2mr"
        translated[target] = {
            k: translate_set(gens[key], part[src][k].labelled(), target, cfg.image_size)
            for k in ("train", "val")
        }

    # 4. train and score every segmenter on the target test patients
    jobs: list[tuple[str, str, float, int]] = []
    for target in targets:
        for s in seed_list:
            for f in fractions:
                jobs.append((target, "target_only", f, s))
            jobs.append((target, "source_only", 0.0, s))
            jobs.append((target, "translated", 0.0, s))
            for f in fractions:
                jobs.append((target, "target_translated", f, s))
    rows: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {}
    run_dirs: dict[tuple[str, str, float, int], Path] = {}
    t_seg = time.time()
    for n, (target, scenario, f, s) in enumerate(jobs, 1):
        src = OTHER[target]
        tgt_train = label_subset(part[target]["train"], f, cfg.split_seed) if f else None
        train_sets: list[SliceSet]
        if scenario == "target_only":
            train_sets, val = [tgt_train], part[target]["val"]
        elif scenario == "source_only":
            train_sets, val = [part[src]["train"]], part[src]["val"]
        elif scenario == "translated":
            train_sets, val = [translated[target]["train"]], translated[target]["val"]
        else:
            train_sets, val = [tgt_train, translated[target]["train"]], part[target]["val"]
        name = scenario if not f else f"{scenario}_f{f:g}"
        run_dir = out / "runs" / target / name / f"seed{s}"
        run_dirs[(target, scenario, f, s)] = run_dir
        label = f"[{n}/{len(jobs)}] {target} {SCENARIOS[scenario]}" + (f" f={f:g}" if f else "")
        stage(f"{label} seed {s}")
        if not (run_dir / "model.json").is_file():
            # an interrupted segmenter continues from its checkpoint (removed once finished)
            train_segmenter(
                train_sets,
                val,
                run_dir,
                cfg,
                s,
                progress=progress,
                title=label,
                resume=(run_dir / "checkpoint.json").is_file(),
                resume_command="the same mrict study command (finished runs are kept)",
            )
        test = part[target]["test"].labelled()
        pred = predict_masks(load_segmenter(run_dir), test.images)
        result = evaluate_masks(pred, test.masks, test.patient_ids)
        rows += _per_patient_rows(target, scenario, f, s, result)
        summ = result["summary"]
        counts[f"{target}/{name}/seed{s}"] = {
            k: summ[k] for k in ("both_empty", "hd95_one_empty", "patients_both_empty", "n_slices")
        }
    t_seg = time.time() - t_seg

    # 5. statistics, tables, figures, report
    summary = summarise(rows)
    tests = comparisons(rows, fractions)
    translation = _translation_metrics(gan_dir, data)
    info = {
        "data": str(data),
        "gan_run": str(gan_dir),
        "preset": preset,
        "seeds": seed_list,
        "label_fractions": fractions,
        "segmentation_config": config_to_dict(cfg),
        "gan_config": gan_meta.get("config", {}),
        "gan_image_size": gan_meta.get("image_size"),
        "split_seed": cfg.split_seed,
        "splits": splits,
        "data_summary": {
            m: {
                k: {
                    "patients": len(v),
                    "slices": len(part[m][k]),
                    "labelled_slices": int(part[m][k].has_mask.sum()),
                    "tumour_slices": int(
                        (part[m][k].masks.reshape(len(part[m][k]), -1).max(1) > 0).sum()
                    )
                    if len(part[m][k])
                    else 0,
                }
                for k, v in splits[m].items()
            }
            for m in MODALITIES
        },
        "scenarios": SCENARIOS,
        "model_selection": SELECTION,
        "metric_policy": POLICY,
        "empty_counts": counts,
        "timing_s": {"gan": round(t_gan, 1), "segmentation": round(t_seg, 1)},
        "platform": platform.platform(),
    }
    _csv(summary, out / "results.csv")
    _csv(rows, out / "per_patient.csv")
    stage("figures and report")
    from mrict.report.figures import make_figures
    from mrict.report.html import write_report

    figures = make_figures(
        out / "figures", gens, part, targets, run_dirs, seed_list, fractions, summary
    )
    info["timing_s"]["total"] = round(time.time() - t0, 1)
    doc = {
        "info": info,
        "summary": summary,
        "tests": tests,
        "translation": translation,
        "per_patient": rows,
    }
    atomic_write_text(out / "results.json", json.dumps(_json_safe(doc), indent=1))
    write_report(out / "report.html", _json_safe(doc), figures)
    return out


def _translation_metrics(gan_dir: Path, data: Path) -> dict[str, Any] | None:
    """Paired-test translation metrics (MAE HU, PSNR, SSIM with baselines) when DATA has them."""
    try:
        from mrict.translation.evaluate import evaluate_translation, find_paired_dir
    except ImportError:
        return None
    if find_paired_dir(data) is None:
        return None
    return evaluate_translation(gan_dir, data, write=False)
