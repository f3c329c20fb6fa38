"""The stages of ``mrict study`` after the CycleGAN, each writing the files the next reads:

1. **data**: patient splits of both modalities (the split the CycleGAN used);
2. **translate**: the labelled source train/val patients into each target modality,
   ``STUDY/translated/<TARGET>_<split>.npz``;
3. **train**: every scenario's segmenters (:mod:`mrict.study.jobs`), each scored on the
   target test patients; ``STUDY/per_patient.csv`` and ``STUDY/stages/train.json``;
4. **evaluate**: statistics from the train stage's file alone, ``STUDY/results.csv`` and
   ``STUDY/results.json``;
5. **report**: figures and ``STUDY/report.html`` (``mrict report STUDY`` redoes it from
   ``results.json``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrict.data.datasets import SliceSet, load_modality
from mrict.data.geometry import resize_batch
from mrict.data.splits import check_disjoint, split_patients
from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_path, atomic_write_text
from mrict.segmentation.config import SegConfig
from mrict.study.analysis import comparisons, summarise
from mrict.study.jobs import OTHER, Job, StudyData, run_jobs

MODALITIES = ("CT", "MR")
TRANSLATED = "translated"
TRAIN_RESULTS = Path("stages") / "train.json"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def json_safe(obj: Any) -> Any:
    """``obj`` with numpy scalars as Python numbers, paths as text and non-finite as None."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def stage_data(
    data: Path, cfg: SegConfig, progress: bool
) -> tuple[dict[str, dict[str, SliceSet]], dict[str, dict[str, list[str]]]]:
    """Both modalities split by patient; ``(part[modality][split], splits)``."""
    sets = {m: load_modality(data, m, size=cfg.image_size, progress=progress) for m in MODALITIES}
    splits = {m: split_patients(sets[m].patients(), seed=cfg.split_seed) for m in MODALITIES}
    for m in MODALITIES:
        check_disjoint(splits[m])
        if not splits[m]["test"] or not sets[m].select(splits[m]["test"]).labelled().images.size:
            raise MrictError(f"{m} has no labelled test patients (need at least 3 patients)", data)
    part = {m: {k: sets[m].select(v) for k, v in splits[m].items()} for m in MODALITIES}
    return part, splits


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


def stage_translate(
    out: Path,
    gens: dict[str, Any],
    part: dict[str, dict[str, SliceSet]],
    targets: Sequence[str],
    size: int,
) -> None:
    """Write ``STUDY/translated/<TARGET>_<split>.npz``: the labelled source train and val
    patients translated into each target modality (images (N, H, W) in [-1, 1], the source
    masks, which slices carry one, and patient ids)."""
    folder = out / TRANSLATED
    folder.mkdir(exist_ok=True)
    for target in targets:
        src = OTHER[target]
        key = "mr2ct" if src == "MR" else "ct2mr"
        for split in ("train", "val"):
            s = translate_set(gens[key], part[src][split].labelled(), target, size)
            with atomic_path(folder / f"{target}_{split}.npz") as tmp, open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    images=s.images,
                    masks=s.masks,
                    has_mask=s.has_mask,
                    patient_ids=np.asarray(s.patient_ids, dtype=str),
                )


def load_translated(out: Path, targets: Sequence[str]) -> dict[str, dict[str, SliceSet]]:
    """The translate stage's sets, ``translated[target][split]``."""
    result: dict[str, dict[str, SliceSet]] = {}
    for target in targets:
        result[target] = {}
        for split in ("train", "val"):
            path = out / TRANSLATED / f"{target}_{split}.npz"
            if not path.is_file():
                raise MrictError("translated sets missing: run the translate stage", path)
            with np.load(path) as z:
                result[target][split] = SliceSet(
                    target,
                    z["images"],
                    z["masks"],
                    z["has_mask"],
                    [str(p) for p in z["patient_ids"]],
                )
    return result


def stage_train(
    out: Path,
    cfg: SegConfig,
    part: dict[str, dict[str, SliceSet]],
    jobs: Sequence[Job],
    targets: Sequence[str],
    *,
    workers: int,
    threads: int,
    progress: bool,
    stage: Callable[[str], None],
) -> dict[str, Any]:
    """Train and score every job on the translate stage's sets; write
    ``STUDY/per_patient.csv`` and ``STUDY/stages/train.json`` (rows, empty-mask counts,
    run information and folders) and return the latter's content."""
    translated = load_translated(out, targets)
    results = run_jobs(
        jobs,
        StudyData(cfg, out, part, translated, tuple(jobs)),
        workers=workers,
        threads=threads,
        progress=progress,
        stage=stage,
    )
    train = {
        "rows": [r for job in jobs for r in results[job]["rows"]],
        "counts": {job.key: results[job]["counts"] for job in jobs},
        "runs": {job.key: results[job]["info"] for job in jobs},
        "run_dirs": [[j.target, j.scenario, j.fraction, j.seed, str(j.run_dir(out))] for j in jobs],
    }
    write_csv(train["rows"], out / "per_patient.csv")
    (out / TRAIN_RESULTS).parent.mkdir(exist_ok=True)
    atomic_write_text(out / TRAIN_RESULTS, json.dumps(json_safe(train), indent=1))
    return train


def stage_evaluate(
    out: Path, fractions: Sequence[float], info: dict[str, Any], translation: Any
) -> dict[str, Any]:
    """Statistics from ``STUDY/stages/train.json`` alone: ``results.csv`` and
    ``results.json`` (with ``info``, the study's description, and the paired-test
    ``translation`` metrics); returns the results document."""
    path = out / TRAIN_RESULTS
    if not path.is_file():
        raise MrictError("training results missing: run the train stage", path)
    train = json.loads(path.read_text("utf-8"))
    rows = [{k: (math.nan if v is None else v) for k, v in r.items()} for r in train["rows"]]
    summary = summarise(rows)
    info = {**info, "runs": train["runs"], "empty_counts": train["counts"]}
    doc = {
        "info": info,
        "summary": summary,
        "tests": comparisons(rows, fractions),
        "translation": translation,
        "per_patient": rows,
    }
    write_csv(summary, out / "results.csv")
    safe = json_safe(doc)
    atomic_write_text(out / "results.json", json.dumps(safe, indent=1))
    return safe


def run_dirs_of(train: dict[str, Any]) -> dict[tuple[str, str, float, int], Path]:
    """The train stage's run folders by (target, scenario, fraction, seed)."""
    return {(t, s, float(f), int(seed)): Path(d) for t, s, f, seed, d in train["run_dirs"]}
