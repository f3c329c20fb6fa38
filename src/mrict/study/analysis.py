"""Study analysis: summary rows (means, bootstrap and seed intervals, validation Dice) and the
paired scenario comparisons, from the per-patient rows of ``mrict study``.

A row is ``{"target", "scenario", "label_fraction", "seed", "patient", "dice", "iou",
"hd95"}``, optionally with ``"val_dice"`` (best validation Dice of that seed's segmenter) and
``"selected_on"`` (the split its model was selected on).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mrict.study.scenarios import SCENARIOS, SELECTION
from mrict.study.stats import (
    BOOT_SEED,
    N_RESAMPLES,
    bootstrap_ci,
    holm,
    mean_ci,
    paired_test_with_seeds,
)

METRICS = ("dice", "iou", "hd95")
#: the range each metric's mean (and so its intervals) lives in
BOUNDS: dict[str, tuple[float, float]] = {
    "dice": (0.0, 1.0),
    "iou": (0.0, 1.0),
    "hd95": (0.0, math.inf),
}
#: segmenter seeds per preset when a study is not told how many
DEFAULT_SEEDS: dict[str, int] = {"quick": 3, "paper": 5}
DEFAULT_FRACTIONS: tuple[float, ...] = (1.0, 0.25, 0.1)
#: how ``summarise`` computes the patient interval (recorded in every summary row)
CI_PATIENTS_METHOD = f"bootstrap BCa over patients, {N_RESAMPLES} resamples, seed {BOOT_SEED}"

Key = tuple[str, str, float]
RunKey = tuple[str, str, float, int]


def preset_seeds(preset: str) -> int:
    """The default number of segmenter seeds of ``preset`` (3 for unknown presets)."""
    return DEFAULT_SEEDS.get(preset, DEFAULT_SEEDS["quick"])


def _order(scenario: str) -> int:
    return list(SCENARIOS).index(scenario) if scenario in SCENARIOS else len(SCENARIOS)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)


def _mean(values: Sequence[Any]) -> float:
    x = [float(v) for v in values if _finite(v)]
    return float(np.mean(x)) if x else math.nan


def _key(r: Mapping[str, Any]) -> Key:
    return (r["target"], r["scenario"], r["label_fraction"])


def summarise(
    rows: list[dict[str, Any]],
    val_dice: Mapping[RunKey, float] | None = None,
    selected_on: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One summary row per (target, scenario, label fraction), all with the same keys.

    For each metric: ``{m}_mean``, the mean over patients of each patient's mean over seeds;
    ``{m}_ci_patients_lo/hi``, its 95% bootstrap (BCa) interval over patients; and
    ``{m}_ci_seeds_lo/hi``, the Student-t interval over the seeds' means over patients. Both
    are clipped to the metric's range ([0, 1] for Dice and IoU). ``val_dice`` is the mean over
    seeds of the segmenters' best validation Dice, from ``val_dice[(target, scenario,
    fraction, seed)]`` or else the rows' ``val_dice`` field (nan when neither has it);
    ``selected_on`` names the split the model was selected on (``selected_on[scenario]``, the
    rows' field, or :data:`~mrict.study.scenarios.SELECTION`).
    """
    groups: dict[Key, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    out = []
    for key in sorted(groups, key=lambda k: (k[0], _order(k[1]), -k[2])):
        target, scenario, fraction = key
        sub = groups[key]
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
            per_seed = [_mean([r[m] for r in sub if r["seed"] == s]) for s in seeds]
            per_patient = [_mean([r[m] for r in sub if r["patient"] == p]) for p in patients]
            boot = bootstrap_ci(per_patient, "mean", clip=BOUNDS[m])
            cs = mean_ci(per_seed, clip=BOUNDS[m])
            row[f"{m}_mean"] = boot["estimate"] if boot["n"] else math.nan
            row[f"{m}_ci_patients_lo"], row[f"{m}_ci_patients_hi"] = boot["lo"], boot["hi"]
            row[f"{m}_ci_seeds_lo"], row[f"{m}_ci_seeds_hi"] = cs["lo"], cs["hi"]
            row[f"{m}_sd_seeds"] = (
                float(np.std([v for v in per_seed if _finite(v)], ddof=1))
                if sum(_finite(v) for v in per_seed) >= 2
                else math.nan
            )
        row["ci_patients_method"] = CI_PATIENTS_METHOD
        vals = []
        for s in seeds:
            v = (val_dice or {}).get((target, scenario, fraction, s))
            if not _finite(v):
                v = next((r["val_dice"] for r in sub if r["seed"] == s and "val_dice" in r), None)
            vals.append(v)
        row["val_dice"] = _mean(vals)
        row["val_dice_seeds"] = sum(_finite(v) for v in vals)
        row["selected_on"] = (
            (selected_on or {}).get(scenario)
            or next((r["selected_on"] for r in sub if r.get("selected_on")), None)
            or SELECTION.get(scenario, "")
        )
        out.append(row)
    return out


def per_seed_scores(
    rows: list[dict[str, Any]], target: str, scenario: str, fraction: float, metric: str = "dice"
) -> dict[int, dict[str, float]]:
    """``{seed: {patient: score}}`` of one (target, scenario, fraction)."""
    out: dict[int, dict[str, float]] = {}
    for r in rows:
        if _key(r) == (target, scenario, fraction):
            v = r[metric]
            out.setdefault(r["seed"], {})[r["patient"]] = float(v) if _finite(v) else math.nan
    return out


def patient_means(
    rows: list[dict[str, Any]], target: str, scenario: str, fraction: float
) -> dict[str, float]:
    """Per-patient Dice averaged over seeds for one (target, scenario, fraction)."""
    acc: dict[str, list[float]] = {}
    for r in rows:
        if _key(r) == (target, scenario, fraction):
            acc.setdefault(r["patient"], []).append(r["dice"])
    return {p: _mean(v) for p, v in acc.items()}


def default_pairs(fractions: Sequence[float]) -> list[tuple[str, float, str, float]]:
    """The study's comparisons: (4) vs (1) at every label fraction, (3) vs (2), and (5)
    self-training vs (3) and vs (2)."""
    pairs = [("target_translated", float(f), "target_only", float(f)) for f in fractions]
    pairs += [
        ("translated", 0.0, "source_only", 0.0),
        ("self_training", 0.0, "translated", 0.0),
        ("self_training", 0.0, "source_only", 0.0),
    ]
    return pairs


def comparisons(
    rows: list[dict[str, Any]],
    fractions: Sequence[float],
    pairs: Sequence[tuple[str, float, str, float]] | None = None,
    metric: str = "dice",
) -> list[dict[str, Any]]:
    """Paired comparisons of per-patient ``metric`` for each target and each ``(a, fa, b,
    fb)`` pair (default :func:`default_pairs`); pairs without data on both sides are skipped.

    Each test holds :func:`~mrict.study.stats.paired_test_with_seeds`'s result (``p`` is the
    Wilcoxon signed-rank p on per-patient means over seeds) plus ``p_holm``, Holm-adjusted
    over the ``n_tests`` tests returned that have a p-value, and ``label_fraction`` (``fa``, else ``fb``).
    """
    tests = []
    for target in sorted({r["target"] for r in rows}):
        for a, fa, b, fb in pairs if pairs is not None else default_pairs(fractions):
            sa = per_seed_scores(rows, target, a, fa, metric)
            sb = per_seed_scores(rows, target, b, fb, metric)
            if not sa or not sb:
                continue
            res = paired_test_with_seeds(sa, sb)
            if not res["n"]:
                continue
            tests.append(
                {
                    "target": target,
                    "a": a,
                    "b": b,
                    "label_fraction": fa if fa else fb,
                    "fraction_a": fa,
                    "fraction_b": fb,
                    "metric": metric,
                    **res,
                }
            )
    adjusted = holm([t["p"] for t in tests])
    n_tests = sum(math.isfinite(p) for p in adjusted)
    for t, p in zip(tests, adjusted, strict=True):
        t["p_holm"], t["n_tests"] = p, n_tests
    return tests
