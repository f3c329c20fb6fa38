"""The study's training scenarios (one registry), the label-fraction subsampling and the
self-training pseudo-labels.

Each :class:`Scenario` names the data it trains on, by key:

- ``"target"``: target train patients with their masks (only ``label_fraction`` of them
  labelled, :func:`label_subset`);
- ``"source"``: source train patients with the source masks;
- ``"translated"``: source train patients translated into the target modality, with the
  source masks;
- ``"pseudo_target"``: all target train patients, labelled with confident pseudo-labels
  of the scenario's ``teacher`` segmenter (:func:`pseudo_label`; target masks unused).

The first key is the main training set; further keys are the extra sets combined with it
by ``SegConfig.schedule`` (:func:`mrict.segmentation.trainer.train_segmenter`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mrict.data.datasets import SliceSet

#: the data keys a scenario may train or be selected on
DATA_KEYS = ("target", "source", "translated", "pseudo_target")


@dataclass(frozen=True)
class Scenario:
    """One training scenario of the study."""

    key: str
    #: report label, e.g. "(1) target only"
    label: str
    #: short label for figure legends and axes
    short: str
    #: data keys (see the module docstring); the first is the main set, the rest are extra
    trains_on: tuple[str, ...]
    #: data key of the validation split the model is selected on
    validates_on: str
    #: the selection split in words (shown in the report)
    selection: str
    #: the training data in words (shown in the report)
    data: str
    uses_target_labels: bool
    #: trained once per label fraction (else once, at label fraction 0.0)
    uses_label_fraction: bool
    #: scenario whose trained segmenter (same target and seed) labels the ``pseudo_target``
    #: data (its weights are not reused: the student is trained from scratch)
    teacher: str | None = None


REGISTRY: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario(
            "target_only",
            "(1) target only",
            "(1) target only",
            ("target",),
            "target",
            "target val patients (target labels)",
            "target train patients (their labels)",
            uses_target_labels=True,
            uses_label_fraction=True,
        ),
        Scenario(
            "source_only",
            "(2) source only",
            "(2) source only",
            ("source",),
            "source",
            "source val patients (source labels; no target labels used)",
            "source train patients (source labels)",
            uses_target_labels=False,
            uses_label_fraction=False,
        ),
        Scenario(
            "translated",
            "(3) translated source",
            "(3) translated",
            ("translated",),
            "translated",
            "translated source val patients (source labels; no target labels used)",
            "source train patients translated to the target",
            uses_target_labels=False,
            uses_label_fraction=False,
        ),
        Scenario(
            "target_translated",
            "(4) target + translated source",
            "(4) target + transl.",
            ("target", "translated"),
            "target",
            "target val patients (target labels)",
            "target train patients (their labels) + translated source: (3)'s segmenter "
            "fine-tuned on (1)'s data (schedule pretrain_finetune, the default), or both in "
            "every batch (mixed)",
            uses_target_labels=True,
            uses_label_fraction=True,
        ),
        Scenario(
            "self_training",
            "(5) self-training",
            "(5) self-training",
            ("pseudo_target", "translated"),
            "translated",
            "translated source val patients (source labels; no target labels used)",
            "translated source + target train patients pseudo-labelled by (3), confident "
            "slices only, in every batch; retrained from scratch (no target labels used)",
            uses_target_labels=False,
            uses_label_fraction=False,
            teacher="translated",
        ),
    )
}

#: scenario key -> report label (the order is the report's order)
SCENARIOS: dict[str, str] = {k: s.label for k, s in REGISTRY.items()}
#: which split each scenario is model-selected on (no scenario ever uses test patients)
SELECTION: dict[str, str] = {k: s.selection for k, s in REGISTRY.items()}


def check_registry(registry: dict[str, Scenario] = REGISTRY) -> None:
    """Raise AssertionError when the registry is inconsistent (a programming error)."""
    order = list(registry)
    for i, (key, s) in enumerate(registry.items()):
        assert s.key == key and s.label and s.short and s.selection and s.data, key
        assert s.trains_on and all(d in DATA_KEYS for d in s.trains_on), key
        assert s.validates_on in DATA_KEYS and s.validates_on != "pseudo_target", key
        uses_target = "target" in s.trains_on or s.validates_on == "target"
        assert uses_target == s.uses_target_labels == s.uses_label_fraction, key
        if "pseudo_target" in s.trains_on or s.teacher is not None:
            assert s.teacher in registry and order.index(s.teacher) < i, key
            assert not registry[s.teacher].uses_label_fraction, key


def dependencies(key: str, schedule: str) -> tuple[str, ...]:
    """Scenarios whose segmenter (same target and seed) ``key`` needs under ``schedule``:
    its ``teacher``, and for "pretrain_finetune" (3) for every scenario with extra data."""
    s = REGISTRY[key]
    if s.teacher is not None:
        return (s.teacher,)
    if schedule == "pretrain_finetune" and len(s.trains_on) > 1 and "translated" in s.trains_on:
        return ("translated",)
    return ()


def study_jobs(
    targets: Sequence[str], seeds: Sequence[int], fractions: Sequence[float]
) -> list[tuple[str, str, float, int]]:
    """``(target, scenario, label_fraction, seed)`` for every segmenter of a study, in
    training order (a scenario's dependencies come first): per target and seed, the
    registry's scenarios, label-fraction scenarios once per fraction (largest first),
    the others once at fraction 0.0."""
    fractions = sorted({float(f) for f in fractions}, reverse=True)
    jobs = []
    for target in targets:
        for seed in seeds:
            for key, s in REGISTRY.items():
                for f in fractions if s.uses_label_fraction else [0.0]:
                    jobs.append((target, key, f, seed))
    return jobs


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


def pseudo_label(
    probs: np.ndarray, confidence: float = 0.9, max_uncertain: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-labels from (N, H, W) tumour probabilities in [0, 1].

    A pixel is confident when ``p >= confidence`` or ``p <= 1 - confidence``. A slice is
    kept when its unconfident pixels number at most ``max_uncertain`` times its pixels
    that are not confidently background (``p > 1 - confidence``); a slice predicted
    confidently tumour-free everywhere is kept as a negative. Returns ``(masks, keep)``:
    (N, H, W) uint8 masks ``p >= 0.5`` and the (N,) bool kept slices.
    """
    probs = np.asarray(probs, dtype=np.float32)
    lo = 1.0 - confidence
    flat = probs.reshape(len(probs), -1)
    uncertain = ((flat > lo) & (flat < confidence)).sum(1)
    not_background = (flat > lo).sum(1)
    keep = uncertain <= max_uncertain * not_background
    return (probs >= 0.5).astype(np.uint8), keep


def pseudo_labelled_set(
    train: SliceSet, probs: np.ndarray, confidence: float, max_uncertain: float
) -> tuple[SliceSet, dict[str, Any]]:
    """``train``'s slices with :func:`pseudo_label` masks (``has_mask`` = kept) in place of
    its own masks, which are not used; and a summary of the pseudo-labels."""
    masks, keep = pseudo_label(probs, confidence, max_uncertain)
    out = SliceSet(train.modality, train.images, masks, keep, list(train.patient_ids))
    tumour = masks.reshape(len(masks), -1).max(1) > 0 if len(masks) else np.zeros(0, bool)
    stats = {
        "slices": len(train),
        "kept": int(keep.sum()),
        "kept_with_tumour": int((keep & tumour).sum()),
        "kept_tumour_free": int((keep & ~tumour).sum()),
        "patients_with_kept_slices": len(
            {p for p, k in zip(train.patient_ids, keep, strict=True) if k}
        ),
        "confidence": confidence,
        "max_uncertain": max_uncertain,
    }
    return out, stats
