"""Segmentation metrics against hand-computed cases, including the empty-mask policy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mrict.segmentation.metrics import dice_iou, evaluate_masks, hd95


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def test_dice_iou_hand_computed() -> None:
    a = box(10, 10, 0, 4, 0, 4)  # 16 px
    b = box(10, 10, 0, 4, 2, 6)  # 16 px, overlap 8
    d, j = dice_iou(a, b)
    assert d == pytest.approx(2 * 8 / 32)
    assert j == pytest.approx(8 / 24)
    assert dice_iou(a, a) == (1.0, 1.0)


def test_empty_cases() -> None:
    empty = np.zeros((8, 8), np.uint8)
    full = box(8, 8, 2, 4, 2, 4)
    d, j = dice_iou(empty, empty)
    assert math.isnan(d) and math.isnan(j)
    assert dice_iou(empty, full) == (0.0, 0.0)
    assert math.isnan(hd95(empty, empty))
    assert hd95(full, empty) == pytest.approx(math.hypot(8, 8))


def test_hd95_hand_computed() -> None:
    a = np.zeros((20, 20), np.uint8)
    b = np.zeros((20, 20), np.uint8)
    a[5, 5] = 1
    b[5, 10] = 1
    assert hd95(a, b) == pytest.approx(5.0)
    # 6x6 squares shifted by 3 columns: every boundary point is within 3 px of the other
    assert hd95(box(20, 20, 2, 8, 2, 8), box(20, 20, 2, 8, 5, 11)) == pytest.approx(3.0)
    assert hd95(box(20, 20, 2, 8, 2, 8), box(20, 20, 2, 8, 2, 8)) == 0.0


def test_evaluate_masks_policy_and_pooling() -> None:
    t = np.stack(
        [box(10, 10, 0, 4, 0, 4), np.zeros((10, 10)), box(10, 10, 0, 2, 0, 2), np.zeros((10, 10))]
    )
    p = np.stack(
        [box(10, 10, 0, 4, 2, 6), np.zeros((10, 10)), np.zeros((10, 10)), np.zeros((10, 10))]
    )
    ids = ["A", "A", "B", "C"]
    r = evaluate_masks(p, t, ids)
    s = r["summary"]
    assert s["both_empty"] == 2  # slice 2 of A and the only slice of C
    assert s["hd95_one_empty"] == 1  # B: tumour missed
    assert s["patients_both_empty"] == 1  # C
    # slice mean over the two scorable slices: (0.5 + 0) / 2
    assert s["slice_dice"] == pytest.approx(0.25)
    pat = {row["patient"]: row for row in r["patients"]}
    assert pat["A"]["dice"] == pytest.approx(0.5)  # pooled: 2*8 / (16 + 16)
    assert pat["B"]["dice"] == 0.0
    assert math.isnan(pat["C"]["dice"])
    assert s["patient_dice"] == pytest.approx(0.25)
    assert s["n_patients"] == 3


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError):
        evaluate_masks(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), ["a", "b"])
