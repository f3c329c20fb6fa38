"""Score a trained segmenter on a data set's labelled slices (Dice, IoU, HD95)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mrict.data.datasets import load_modality
from mrict.data.splits import split_patients
from mrict.errors import MrictError
from mrict.segmentation.metrics import evaluate_masks
from mrict.segmentation.predict import load_segmenter, predict_masks


def evaluate_run(
    run_dir: str | Path,
    data: str | Path,
    *,
    split: str = "test",
    modality: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``run_dir`` on ``data`` (the run's modality unless ``modality`` is given).

    ``split`` is "test", "val" or "train" (the patient split of :func:`split_patients` with
    the run's split seed, so training patients are never scored as test), or "all". Metrics
    are computed at the network's resolution; see :mod:`mrict.segmentation.metrics` for the
    empty-mask policy.
    """
    seg = load_segmenter(run_dir)
    modality = (modality or seg.modality).upper()
    full = load_modality(data, modality, size=seg.config.image_size, progress=progress)
    labelled = full.labelled()
    if len(labelled) == 0:
        raise MrictError(f"no {modality} masks to evaluate against", data)
    if split != "all":
        splits = split_patients(full.patients(), seed=seg.config.split_seed)
        if split not in splits:
            raise MrictError(f"unknown split {split!r} (use test, val, train or all)")
        labelled = labelled.select(splits[split])
        if len(labelled) == 0:
            raise MrictError(f"the {split} split holds no labelled {modality} slices", data)
    pred = predict_masks(seg, labelled.images)
    result = evaluate_masks(pred, labelled.masks, labelled.patient_ids)
    result["summary"].update({"modality": modality, "split": split, "run": str(run_dir)})
    return result
