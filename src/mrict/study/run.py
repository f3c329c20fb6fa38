"""``mrict study``: train one CycleGAN, translate the labelled source patients, train the
segmenters of every scenario in :data:`mrict.study.scenarios.REGISTRY` for every seed (and
label fraction), score them all on the same target test patients and write results,
statistics, figures and the HTML report.

Study folder: ``study.json`` (marks the folder as a study), ``gan/`` (unless ``gan_run``
is given) and ``gan_seed<S>/`` for each translator the check retrained
(:mod:`mrict.study.translator`), ``runs/<TARGET>/<scenario>[_f<F>]/seed<S>/`` (self-training runs also hold
``pseudo_labels.{npz,json}``),
``translated/`` (the translated source sets), ``stages/train.json`` (every segmenter's
test rows), ``results.csv`` (one row per target, scenario and label fraction),
``per_patient.csv``, ``results.json``, ``figures/*.png`` and ``report.html``; the stages are
in :mod:`mrict.study.stages`. Segmenters already trained in the
folder are reused, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mrict.config import config_to_dict, resolve_config
from mrict.data.datasets import SliceSet
from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_write_text
from mrict.runtime.outputs import check_not_input, check_writable
from mrict.runtime.threads import current_plan
from mrict.segmentation.config import SEG_PRESETS, SegConfig
from mrict.segmentation.metrics import POLICY
from mrict.study.analysis import DEFAULT_FRACTIONS, preset_seeds
from mrict.study.jobs import Job, worker_plan
from mrict.study.scenarios import REGISTRY, SCENARIOS, SELECTION, study_jobs
from mrict.study.stages import (
    MODALITIES,
    run_dirs_of,
    stage_data,
    stage_evaluate,
    stage_train,
    stage_translate,
)
from mrict.study.translator import DEFAULT_TRANSLATOR_TRIES, log, study_translator

#: scenarios that use target labels (and so depend on the label fraction)
USES_TARGET_LABELS = tuple(k for k, s in REGISTRY.items() if s.uses_target_labels)
#: written first into every study folder: a later run recognises the folder as its own
STUDY_MARKER = "study.json"


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
    seeds: int | Sequence[int] | None = None,
    label_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    gan_run: str | Path | None = None,
    seed: int = 0,
    seg_overrides: dict[str, Any] | None = None,
    gan_overrides: dict[str, Any] | None = None,
    seg_config: str | Path | None = None,
    targets: Sequence[str] = MODALITIES,
    progress: bool = True,
    on_stage: Callable[[str], None] | None = None,
    overwrite: bool = False,
    workers: int | str = 1,
    translator_tries: int = DEFAULT_TRANSLATOR_TRIES,
) -> Path:
    """Run the whole study on ``data``; return the study folder (holding report.html).

    ``seeds``: a count (seeds ``seed, seed+1, ...``) or explicit seeds of the segmenter
    training (None: the preset's default, 3 for quick, 5 for paper). ``label_fractions``:
    fractions of the target train patients whose masks the target-label scenarios (1) and
    (4) may use. ``workers``: processes training segmenters side by side (an integer or
    "auto", see :func:`mrict.study.jobs.worker_plan`); results depend on the CPU threads
    each gets, not on the order. An existing study folder is continued
    (finished runs are kept); any other non-empty folder needs ``overwrite``.
    ``translator_tries``: CycleGANs trained at most (seeds ``seed``, ``seed + 1``, ...) until
    one carries the tumour across on ``DATA/paired_val``
    (:func:`mrict.study.translator.study_translator`).
    """
    t0 = time.time()
    data, out = Path(data), Path(out)
    if not data.is_dir():
        raise MrictError("data folder not found", data)
    check_study_folder(out, data, overwrite)
    seed_list, fractions = _seeds_and_fractions(preset, seeds, seed, label_fractions)
    # segmentation options: preset <- YAML file ``seg_config`` <- ``seg_overrides``
    cfg = resolve_config(SegConfig, SEG_PRESETS, preset, seg_config, seg_overrides or {})
    _start_folder(out, data, preset)
    stage = on_stage or log

    # 1. the CycleGAN, trained on the train split (split seed 0) only
    gan_dir, gan_meta, translator_check = study_translator(
        data,
        out,
        preset,
        Path(gan_run) if gan_run else None,
        seed,
        progress,
        gan_overrides,
        translator_tries,
    )
    gens = _load_checked_generators(gan_dir, gan_meta, cfg)
    t_gan = time.time() - t0

    # 2.-3. data and patient splits (the split the CycleGAN used), translated source sets
    stage("loading data")
    part, splits = stage_data(data, cfg, progress)
    stage("translating source patients")
    stage_translate(out, gens, part, targets, cfg.image_size)

    # 4. train and score every segmenter on the target test patients (the jobs, their data
    # and selection split come from the scenario registry; prerequisites are trained first)
    jobs = [Job(*j) for j in study_jobs(targets, seed_list, fractions)]
    plan = current_plan()
    n_workers, threads = worker_plan(workers, plan.threads, cfg.device)
    if n_workers > 1:
        stage(f"training {len(jobs)} segmenters in {n_workers} processes, {threads} thread(s) each")
    t_seg = time.time()
    train = stage_train(
        out,
        cfg,
        part,
        jobs,
        targets,
        workers=n_workers,
        threads=threads,
        progress=progress,
        stage=stage,
    )
    t_seg = time.time() - t_seg

    # 5. statistics, then figures and the report
    info = {
        **_describe(data, gan_dir, gan_meta, preset, seed_list, fractions, cfg, splits, part),
        "translator_check": translator_check,
        "timing_s": {"gan": round(t_gan, 1), "segmentation": round(t_seg, 1)},
        "segmentation_processes": {"workers": n_workers, "threads_each": threads},
        "cpu_threads": plan.as_dict(),
        "platform": platform.platform(),
    }
    doc = stage_evaluate(out, fractions, info, _translation_metrics(gan_dir, data))
    stage("figures and report")
    from mrict.report.figures import make_figures
    from mrict.report.html import write_report

    figures = make_figures(
        out / "figures",
        gens,
        part,
        targets,
        run_dirs_of(train),
        seed_list,
        fractions,
        doc["summary"],
    )
    doc["info"]["timing_s"]["total"] = round(time.time() - t0, 1)
    atomic_write_text(out / "results.json", json.dumps(doc, indent=1))
    write_report(out / "report.html", doc, figures)
    return out


def _load_checked_generators(
    gan_dir: Path, gan_meta: dict[str, Any], cfg: SegConfig
) -> dict[str, Any]:
    """The CycleGAN's generators, after checking it used the study's patient split."""
    gan_split_seed = int(gan_meta.get("config", {}).get("split_seed", cfg.split_seed))
    if gan_split_seed != cfg.split_seed:
        raise MrictError(
            f"CycleGAN run used split seed {gan_split_seed}, the study uses {cfg.split_seed}; "
            "test patients could have been seen in training",
            gan_dir,
        )
    from mrict.translation.translate import load_generators

    return load_generators(gan_dir, cfg.device if cfg.device != "auto" else None)


def _seeds_and_fractions(
    preset: str, seeds: int | Sequence[int] | None, seed: int, label_fractions: Sequence[float]
) -> tuple[list[int], list[float]]:
    """The segmenter seeds (a count from ``seed``, explicit seeds, or the preset's default)
    and the label fractions, largest first; one-line errors for unusable values."""
    if seeds is None:
        seeds = preset_seeds(preset)
    seed_list = list(range(seed, seed + int(seeds))) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise MrictError("--seeds must be at least 1")
    fractions = sorted({float(f) for f in label_fractions}, reverse=True)
    if not fractions or any(not 0.0 < f <= 1.0 for f in fractions):
        raise MrictError(f"label fractions must be in (0, 1], got {list(label_fractions)}")
    return seed_list, fractions


def _start_folder(out: Path, data: Path, preset: str) -> None:
    """Create the study folder and its marker (kept when continuing a study)."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / STUDY_MARKER).is_file():
        marker = {"kind": "mrict-study", "data": str(data.resolve()), "preset": preset}
        atomic_write_text(out / STUDY_MARKER, json.dumps(marker, indent=1))
    (out / "figures").mkdir(exist_ok=True)


def _describe(
    data: Path,
    gan_dir: Path,
    gan_meta: dict[str, Any],
    preset: str,
    seed_list: list[int],
    fractions: list[float],
    cfg: SegConfig,
    splits: dict[str, dict[str, list[str]]],
    part: dict[str, dict[str, SliceSet]],
) -> dict[str, Any]:
    """The study's description in ``results.json``: inputs, configuration, splits and the
    size of every split, scenarios and the metric policy."""
    return {
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
        "scenario_registry": {k: dataclasses.asdict(v) for k, v in REGISTRY.items()},
        "metric_policy": POLICY,
    }


def _translation_metrics(gan_dir: Path, data: Path) -> dict[str, Any] | None:
    """Paired-test translation metrics (MAE HU, PSNR, SSIM with baselines) when DATA has them;
    None only when DATA has no paired test set."""
    from mrict.translation.evaluate import evaluate_translation, find_paired_dir

    if find_paired_dir(data) is None:
        return None
    return evaluate_translation(gan_dir, data, write=False)
