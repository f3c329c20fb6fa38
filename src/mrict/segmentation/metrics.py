"""Overlap and distance metrics for binary tumour masks, per slice and per patient.

Policy for empty masks (tumour-free slices are common in brain data):

* **Slice Dice / IoU** are undefined when ground truth and prediction are both empty. Such
  slices are *excluded* from the slice means and *counted* (``both_empty``). A slice where
  exactly one of them is empty scores 0.
* **Patient Dice / IoU** pool all of a patient's slices (``2|P & G| / (|P| + |G|)`` over the
  stack). A patient whose ground truth and prediction are both empty on every slice is
  excluded the same way and counted (``patients_both_empty``).
* **HD95** (95th-percentile symmetric Hausdorff distance, in pixels of the evaluated grid)
  needs a boundary on both sides: both-empty slices are excluded; when exactly one side is
  empty the slice scores the image diagonal (the largest possible distance) and is counted
  (``hd95_one_empty``). A patient's HD95 is the mean over its scored slices.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

POLICY = (
    "Slices (and patients) whose ground truth and prediction are both empty are excluded "
    "from the Dice/IoU/HD95 means and counted; exactly one empty side scores Dice = IoU = 0 "
    "and HD95 = image diagonal. Patient Dice/IoU pool all of a patient's slices."
)


def dice_iou(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two binary arrays of the same shape; (nan, nan) when both are empty."""
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(true, dtype=bool)
    inter = int(np.logical_and(p, t).sum())
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return math.nan, math.nan
    union = total - inter
    return 2.0 * inter / total, inter / union


def hd95(pred: np.ndarray, true: np.ndarray) -> float:
    """95th-percentile symmetric Hausdorff distance (pixels) of two (H, W) binary masks.

    Both empty -> nan; exactly one empty -> the image diagonal (see module policy).
    """
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(true, dtype=bool)
    if not p.any() and not t.any():
        return math.nan
    if not p.any() or not t.any():
        return float(math.hypot(*p.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_hausdorff_distance(
            torch.from_numpy(p)[None, None].float(),
            torch.from_numpy(t)[None, None].float(),
            include_background=True,
            percentile=95,
        )
    return float(value.reshape(-1)[0])


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def evaluate_masks(
    pred: np.ndarray, true: np.ndarray, patient_ids: Sequence[str], *, with_hd95: bool = True
) -> dict[str, Any]:
    """Score predictions (N, H, W) against ground truth (N, H, W), both binary.

    Returns ``{"slices": [...], "patients": [...], "summary": {...}}``: per-slice rows
    (patient, dice, iou, hd95), per-patient rows (patient, dice, iou, hd95, slices) and
    means over slices and over patients with the counts of excluded cases (module policy).
    ``with_hd95=False`` skips the (slower) distance metric; its values are then nan.
    """
    pred = np.asarray(pred).astype(bool)
    true = np.asarray(true).astype(bool)
    if pred.shape != true.shape or pred.ndim != 3 or len(patient_ids) != len(pred):
        raise ValueError(
            f"shape mismatch: pred {pred.shape}, true {true.shape}, {len(patient_ids)} ids"
        )
    slices: list[dict[str, Any]] = []
    rows: dict[str, list[int]] = defaultdict(list)
    both_empty = one_empty = 0
    for i, pid in enumerate(patient_ids):
        d, j = dice_iou(pred[i], true[i])
        h = hd95(pred[i], true[i]) if with_hd95 else math.nan
        if math.isnan(d):
            both_empty += 1
        elif not pred[i].any() or not true[i].any():
            one_empty += 1
        slices.append({"patient": pid, "dice": d, "iou": j, "hd95": h})
        rows[pid].append(i)
    patients: list[dict[str, Any]] = []
    patients_both_empty = 0
    for pid in sorted(rows):
        idx = rows[pid]
        d, j = dice_iou(pred[idx], true[idx])
        if math.isnan(d):
            patients_both_empty += 1
        patients.append(
            {
                "patient": pid,
                "dice": d,
                "iou": j,
                "hd95": _nanmean([slices[i]["hd95"] for i in idx]),
                "slices": len(idx),
            }
        )
    summary = {
        "slice_dice": _nanmean([s["dice"] for s in slices]),
        "slice_iou": _nanmean([s["iou"] for s in slices]),
        "slice_hd95": _nanmean([s["hd95"] for s in slices]),
        "patient_dice": _nanmean([p["dice"] for p in patients]),
        "patient_iou": _nanmean([p["iou"] for p in patients]),
        "patient_hd95": _nanmean([p["hd95"] for p in patients]),
        "n_slices": len(slices),
        "n_patients": len(patients),
        "both_empty": both_empty,
        "hd95_one_empty": one_empty,
        "patients_both_empty": patients_both_empty,
        "policy": POLICY,
    }
    return {"slices": slices, "patients": patients, "summary": summary}
