"""The study's segmenter jobs: one per (target, scenario, label fraction, seed), trained
and scored on the target test patients, in dependency waves, in this process or in worker
processes.

A job's result depends only on its data, configuration, seed and CPU thread count, never
on which process or in which order it ran, so ``workers`` changes speed, not results, as
long as each worker gets the same thread count (:func:`worker_plan`).

(2) source only for one target trains on the source's labelled train patients and selects
on its val patients: exactly (1) at label fraction 1 for the other target. When a study
has both, the segmenter is trained once and copied (:func:`twin`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrict.data.datasets import SliceSet
from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_path, atomic_write_text
from mrict.segmentation.config import SegConfig
from mrict.segmentation.metrics import evaluate_masks
from mrict.segmentation.predict import load_segmenter, predict_masks, predict_probabilities
from mrict.segmentation.trainer import train_segmenter
from mrict.study.scenarios import (
    REGISTRY,
    SELECTION,
    dependencies,
    label_subset,
    pseudo_labelled_set,
)

OTHER = {"CT": "MR", "MR": "CT"}
#: files of a finished segmenter run (what a twin copies)
RUN_FILES = ("model.json", "model.safetensors", "history.csv", "loss_curve.png", "config.yaml")
RESUME_HINT = "the same mrict study command (finished runs are kept)"


@dataclasses.dataclass(frozen=True)
class Job:
    """One segmenter of the study; ``fraction`` is 0.0 for scenarios without target labels."""

    target: str
    scenario: str
    fraction: float
    seed: int

    @property
    def name(self) -> str:
        return self.scenario if not self.fraction else f"{self.scenario}_f{self.fraction:g}"

    @property
    def key(self) -> str:
        return f"{self.target}/{self.name}/seed{self.seed}"

    def run_dir(self, out: Path) -> Path:
        return out / "runs" / self.target / self.name / f"seed{self.seed}"

    def label(self) -> str:
        frac = f" f={self.fraction:g}" if self.fraction else ""
        return f"{self.target} {REGISTRY[self.scenario].label}{frac} seed {self.seed}"


@dataclasses.dataclass
class StudyData:
    """What every job reads: the configuration, the study folder, the per-modality patient
    splits (``part[modality][split]``) and the translated source sets
    (``translated[target][split]``)."""

    cfg: SegConfig
    out: Path
    part: dict[str, dict[str, SliceSet]]
    translated: dict[str, dict[str, SliceSet]]
    jobs: tuple[Job, ...]


def _same_as_source_scenario(key: str) -> bool:
    s = REGISTRY[key]
    return s.trains_on == ("source",) and s.validates_on == "source" and s.teacher is None


def _same_as_target_scenario(key: str) -> bool:
    s = REGISTRY[key]
    return s.trains_on == ("target",) and s.validates_on == "target" and s.uses_label_fraction


def twin(job: Job, jobs: Sequence[Job]) -> Job | None:
    """The job of ``jobs`` that trains exactly ``job``'s segmenter (same data, validation
    split, configuration and seed), or None: a source-only job is the other target's
    target-only job at label fraction 1."""
    if not _same_as_source_scenario(job.scenario):
        return None
    for other in jobs:
        if (
            other.target == OTHER[job.target]
            and other.seed == job.seed
            and other.fraction == 1.0
            and _same_as_target_scenario(other.scenario)
        ):
            return other
    return None


def prerequisites(job: Job, jobs: Sequence[Job], schedule: str) -> list[Job]:
    """Jobs that must finish before ``job``: its scenario dependencies and its twin."""
    deps = [Job(job.target, d, 0.0, job.seed) for d in dependencies(job.scenario, schedule)]
    t = twin(job, jobs)
    return deps + ([t] if t is not None else [])


def waves(jobs: Sequence[Job], schedule: str) -> list[list[Job]]:
    """``jobs`` grouped so that every job's prerequisites are in an earlier group (order
    within a group kept)."""
    level: dict[Job, int] = {}

    def depth(job: Job, seen: tuple[Job, ...] = ()) -> int:
        if job not in level:
            if job in seen:
                raise AssertionError(f"dependency cycle at {job.key}")
            pre = [p for p in prerequisites(job, jobs, schedule) if p in jobs]
            level[job] = 1 + max((depth(p, (*seen, job)) for p in pre), default=-1)
        return level[job]

    for job in jobs:
        depth(job)
    return [[j for j in jobs if level[j] == n] for n in range(max(level.values(), default=-1) + 1)]


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def pseudo_target(
    train: SliceSet, teacher: Path, run_dir: Path, cfg: SegConfig
) -> tuple[SliceSet, dict[str, Any]]:
    """All target train slices, their own masks replaced by the ``teacher`` run's
    confident pseudo-labels (:func:`~mrict.study.scenarios.pseudo_label`), stored in
    ``run_dir/pseudo_labels.{npz,json}`` so that a resumed run sees exactly the same labels
    (recomputed when the teacher's weights changed)."""
    npz, sidecar = run_dir / "pseudo_labels.npz", run_dir / "pseudo_labels.json"
    digest = _digest(teacher / "model.safetensors")
    if npz.is_file() and sidecar.is_file():
        try:
            stats = json.loads(sidecar.read_text("utf-8"))
            with np.load(npz) as z:
                masks, keep = z["masks"], z["keep"]
            if stats.get("teacher_digest") == digest and masks.shape == train.masks.shape:
                return SliceSet(train.modality, train.images, masks, keep, train.patient_ids), stats
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            pass  # damaged: recompute
    probs = predict_probabilities(load_segmenter(teacher), train.images)
    pseudo, stats = pseudo_labelled_set(
        train, probs, cfg.pseudo_confidence, cfg.pseudo_max_uncertain
    )
    # diagnostic only, never used for training or selection: agreement of the kept
    # pseudo-labels with the (hidden) target train masks
    k = pseudo.has_mask & train.has_mask
    inter = float((pseudo.masks[k].astype(bool) & train.masks[k].astype(bool)).sum())
    total = float(pseudo.masks[k].sum()) + float(train.masks[k].sum())
    stats.update(
        teacher=str(teacher),
        teacher_digest=digest,
        diagnostic_dice_vs_hidden_masks=2 * inter / total if total else None,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(npz) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, masks=pseudo.masks, keep=pseudo.has_mask)
    atomic_write_text(sidecar, json.dumps(stats, indent=1))
    return pseudo, stats


def train_job(job: Job, data: StudyData, *, progress: bool, stage: Callable[[str], None]) -> None:
    """Train ``job``'s segmenter into its run folder (continuing its checkpoint)."""
    spec, cfg, part, target = REGISTRY[job.scenario], data.cfg, data.part, job.target
    src, run_dir = OTHER[target], job.run_dir(data.out)
    deps = {
        d: Job(target, d, 0.0, job.seed).run_dir(data.out)
        for d in dependencies(job.scenario, cfg.schedule)
    }
    for d, path in deps.items():
        if not (path / "model.json").is_file():
            raise MrictError(f"{spec.label} needs the trained {REGISTRY[d].label} segmenter", path)

    def dataset(key: str) -> SliceSet:
        if key == "target":
            return label_subset(part[target]["train"], job.fraction, cfg.split_seed)
        if key == "source":
            return part[src]["train"]
        if key == "translated":
            return data.translated[target]["train"]
        assert spec.teacher is not None
        pseudo, stats = pseudo_target(part[target]["train"], deps[spec.teacher], run_dir, cfg)
        stage(
            f"  pseudo-labels: {stats['kept']} of {stats['slices']} target train slices kept "
            f"({stats['kept_with_tumour']} with tumour)"
        )
        return pseudo

    vals = {
        "target": part[target]["val"],
        "source": part[src]["val"],
        "translated": data.translated[target]["val"],
    }
    main, *extra = [dataset(k) for k in spec.trains_on]
    run_cfg, init = cfg, None
    if spec.teacher is not None:
        # self-training retrains from scratch, main (pseudo-labelled) and extra mixed per batch
        if cfg.schedule == "pretrain_finetune":
            run_cfg = dataclasses.replace(cfg, schedule="mixed")
        if not main.has_mask.any():
            stage("  no confident pseudo-label: training on the extra data alone")
            main, extra = extra[0], extra[1:]
    elif extra and cfg.schedule == "pretrain_finetune":
        extra, init = [], deps["translated"]  # fine-tune (3)'s segmenter on the target data
    train_segmenter(
        main,
        vals[spec.validates_on],
        run_dir,
        run_cfg,
        job.seed,
        extra=extra or None,
        init=init,
        progress=progress,
        title=job.label(),
        resume=(run_dir / "checkpoint.json").is_file(),
        resume_command=RESUME_HINT,
    )


def copy_run(source: Path, dest: Path) -> None:
    """Copy a finished segmenter run (``model.json`` last, so a half copy is not taken
    for a finished run)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in sorted(RUN_FILES, key=lambda n: n == "model.json"):
        if (source / name).is_file():
            with atomic_path(dest / name) as tmp:
                shutil.copyfile(source / name, tmp)


def per_patient_rows(
    job: Job, result: dict[str, Any], meta: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One row per test patient; ``val_dice`` is the run's best validation Dice (from its
    ``model.json``, nan when it had no scorable validation set) on the split ``selected_on``."""
    val = (meta or {}).get("best_val_dice")
    val_dice = float(val) if val is not None else math.nan
    return [
        {
            "target": job.target,
            "scenario": job.scenario,
            "label_fraction": job.fraction,
            "seed": job.seed,
            "patient": p["patient"],
            "dice": p["dice"],
            "iou": p["iou"],
            "hd95": p["hd95"],
            "slices": p["slices"],
            "val_dice": val_dice,
            "selected_on": SELECTION[job.scenario],
        }
        for p in result["patients"]
    ]


RUN_INFO_KEYS = (
    "best_val_dice",
    "best_iteration",
    "last_iteration",
    "stopped_early",
    "schedule",
    "target_passes",
    "train_slices",
    "cpu_threads",
)


def run_job(
    job: Job, data: StudyData, *, progress: bool, stage: Callable[[str], None]
) -> dict[str, Any]:
    """Train ``job`` (unless its run folder holds a finished model; a twin is copied) and
    score it on the target test patients. Returns its per-patient ``rows``, empty-mask
    ``counts``, run ``info`` and the ``seconds`` it took."""
    t0 = time.time()
    run_dir = job.run_dir(data.out)
    same = twin(job, data.jobs)
    if not (run_dir / "model.json").is_file():
        if same is not None and (same.run_dir(data.out) / "model.json").is_file():
            copy_run(same.run_dir(data.out), run_dir)
        else:
            train_job(job, data, progress=progress, stage=stage)
    seg = load_segmenter(run_dir)
    test = data.part[job.target]["test"].labelled()
    result = evaluate_masks(predict_masks(seg, test.images), test.masks, test.patient_ids)
    summ = result["summary"]
    info = {k: seg.meta.get(k) for k in RUN_INFO_KEYS} | {"selected_on": SELECTION[job.scenario]}
    if same is not None:
        info["same_segmenter_as"] = same.key
    pseudo = run_dir / "pseudo_labels.json"
    if pseudo.is_file():
        info["pseudo_labels"] = json.loads(pseudo.read_text("utf-8"))
    return {
        "rows": per_patient_rows(job, result, seg.meta),
        "counts": {
            k: summ[k] for k in ("both_empty", "hd95_one_empty", "patients_both_empty", "n_slices")
        },
        "info": info,
        "seconds": time.time() - t0,
    }


# --- worker processes -------------------------------------------------------------------


def worker_plan(workers: int | str, threads: int, device: str) -> tuple[int, int]:
    """``(workers, threads per worker)`` for ``threads`` CPU threads. ``"auto"``: one
    process on a GPU or with a single thread, else two processes sharing the threads (two
    1-thread U-Net trainers on 2 cores do 1.3x the work of one 2-thread trainer,
    ``bench/threads.py``)."""
    if isinstance(workers, str):
        if workers.strip().lower() != "auto":
            try:
                workers = int(workers)
            except ValueError:
                msg = f"--workers must be a positive integer or 'auto', got {workers!r}"
                raise MrictError(msg) from None
        else:
            from mrict.runtime.device import pick_device

            workers = 1 if pick_device(device).type != "cpu" or threads < 2 else 2
    if workers < 1:
        raise MrictError(f"--workers must be at least 1, got {workers}")
    return workers, max(1, threads // workers)


def run_jobs(
    jobs: Sequence[Job],
    data: StudyData,
    *,
    workers: int,
    threads: int,
    progress: bool,
    stage: Callable[[str], None],
) -> dict[Job, dict[str, Any]]:
    """Run every job (in waves, prerequisites first); ``workers`` > 1 runs each wave's jobs
    in that many processes with ``threads`` CPU threads each. Returns each job's result."""
    results: dict[Job, dict[str, Any]] = {}
    total, n = len(jobs), 0

    def done(job: Job, result: dict[str, Any]) -> None:
        nonlocal n
        n += 1
        results[job] = result
        info = result["info"]
        val = info.get("best_val_dice")
        how = (
            f"same as {info['same_segmenter_as']}"
            if "same_segmenter_as" in info
            else (
                f"val Dice {val:.3f} at step {info.get('best_iteration')}"
                if isinstance(val, float)
                else "no scorable validation"
            )
        )
        stage(f"[{n}/{total}] {job.label()}: {how} ({result['seconds']:.0f} s)")

    if workers <= 1:
        for wave in waves(jobs, data.cfg.schedule):
            for job in wave:
                done(job, run_job(job, data, progress=progress, stage=stage))
        return results
    from mrict.study.pool import pool_results, slim_data

    for job, result in pool_results(jobs, slim_data(data), workers, threads, stage):
        done(job, result)
    return results
