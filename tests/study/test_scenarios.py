"""The scenario registry (labels, selection, data, order), the job list built from it, the
label fractions and the self-training pseudo-labels."""

from __future__ import annotations

import numpy as np

from mrict.data.datasets import SliceSet
from mrict.report.figures import SCENARIO_LABELS
from mrict.report.html import SCENARIO_NAMES
from mrict.study.run import USES_TARGET_LABELS
from mrict.study.scenarios import (
    DATA_KEYS,
    REGISTRY,
    SCENARIOS,
    SELECTION,
    check_registry,
    dependencies,
    label_subset,
    pseudo_label,
    pseudo_labelled_set,
    study_jobs,
)


def test_registry_is_consistent_and_every_job_has_label_and_selection() -> None:
    check_registry()
    assert list(SCENARIOS) == list(SELECTION) == list(REGISTRY)
    assert set(REGISTRY) == {
        "target_only",
        "source_only",
        "translated",
        "target_translated",
        "self_training",
    }
    jobs = study_jobs(["CT", "MR"], [0, 1], [0.1, 1.0, 0.25])
    for _target, scenario, f, _seed in jobs:
        spec = REGISTRY[scenario]
        assert SCENARIOS[scenario] and SELECTION[scenario] and SCENARIO_LABELS[scenario]
        assert SCENARIO_NAMES[scenario] == spec.label
        assert (f > 0) == spec.uses_label_fraction
        assert set(spec.trains_on) <= set(DATA_KEYS)
    # per target and seed: 3 fractions for (1) and (4), once for (2), (3), (5)
    assert len(jobs) == 2 * 2 * (3 + 1 + 1 + 3 + 1)
    assert [f for t, s, f, _ in jobs if (t, s) == ("CT", "target_only")][:3] == [1.0, 0.25, 0.1]
    # a scenario's dependencies are trained before it, for the same target and seed
    for n, (target, scenario, _f, seed) in enumerate(jobs):
        for schedule in ("mixed", "pretrain_finetune"):
            for dep in dependencies(scenario, schedule):
                assert (target, dep, 0.0, seed) in jobs[:n]
    assert dependencies("target_translated", "pretrain_finetune") == ("translated",)
    assert dependencies("target_translated", "mixed") == ()
    assert set(USES_TARGET_LABELS) == {"target_only", "target_translated"}
    # no scenario without target labels is selected on target labels
    for spec in REGISTRY.values():
        if not spec.uses_target_labels:
            assert "target" not in spec.trains_on and spec.validates_on != "target"
            assert "no target labels" in spec.selection


def test_label_fraction_keeps_at_least_one_patient() -> None:
    for patients, fraction, want in ((28, 0.1, 3), (5, 0.1, 1), (28, 0.25, 7), (4, 1.0, 4)):
        n = 2 * patients
        s = SliceSet(
            "CT",
            np.zeros((n, 4, 4), np.float32),
            np.zeros((n, 4, 4), np.uint8),
            np.ones(n, bool),
            [f"P{i // 2:02d}" for i in range(n)],
        )
        sub = label_subset(s, fraction, seed=0)
        kept = {p for p, h in zip(sub.patient_ids, sub.has_mask, strict=True) if h}
        assert len(kept) == want


def test_pseudo_labels_keep_confident_slices_only() -> None:
    probs = np.zeros((4, 10, 10), np.float32)
    probs[0] = 0.01  # confidently tumour-free: a kept negative
    probs[1, 2:6, 2:6] = 0.99  # a confident tumour with a thin unsure rim
    probs[1, 2:6, 6] = 0.6
    probs[2, 2:6, 2:6] = 0.6  # an unsure blob
    probs[3, 2:6, 2:6] = 0.99  # confident tumour ...
    probs[3, 6:9, 0:9] = 0.3  # ... with a larger unsure region
    masks, keep = pseudo_label(probs, confidence=0.9, max_uncertain=0.5)
    assert keep.tolist() == [True, True, False, False]
    assert masks.dtype == np.uint8 and masks[1].sum() == 20 and masks[0].sum() == 0
    # the target's own masks are never used: they are replaced by the pseudo-labels
    train = SliceSet(
        "CT", probs.copy(), np.ones((4, 10, 10), np.uint8), np.ones(4, bool), list("aabb")
    )
    pseudo, stats = pseudo_labelled_set(train, probs, 0.9, 0.5)
    assert np.array_equal(pseudo.masks, masks) and pseudo.has_mask.tolist() == keep.tolist()
    assert stats["kept"] == 2 and stats["kept_with_tumour"] == 1 and stats["kept_tumour_free"] == 1
