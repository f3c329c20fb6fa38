"""The four training scenarios of the study and the label-fraction subsampling."""

from __future__ import annotations

import math

import numpy as np

from mrict.data.datasets import SliceSet

#: scenario key -> short description (the order is the report's order)
SCENARIOS: dict[str, str] = {
    "target_only": "(1) target only",
    "source_only": "(2) source only",
    "translated": "(3) translated source",
    "target_translated": "(4) target + translated",
}

#: which split each scenario is model-selected on (no scenario ever uses test patients)
SELECTION: dict[str, str] = {
    "target_only": "target val patients (target labels)",
    "source_only": "source val patients (source labels; no target labels used)",
    "translated": "translated source val patients (source labels; no target labels used)",
    "target_translated": "target val patients (target labels)",
}


def label_subset(train: SliceSet, fraction: float, seed: int) -> SliceSet:
    """Keep the masks of ``ceil(fraction * patients)`` train patients (at least one), drawn
    with ``seed``; the other patients' slices are kept but marked unlabelled."""
    if fraction >= 1.0:
        return train
    patients = train.patients()
    k = max(1, math.ceil(fraction * len(patients)))
    keep = set(np.random.default_rng(seed).permutation(patients)[:k].tolist())
    out = train.take(range(len(train)))
    out.has_mask = np.array(
        [h and p in keep for h, p in zip(out.has_mask, out.patient_ids, strict=True)], dtype=bool
    )
    return out
