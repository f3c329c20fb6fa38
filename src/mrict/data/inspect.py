"""Summarise a data set and list every problem found in it (``mrict inspect``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mrict.data.datasets import read_item
from mrict.data.layout import MODALITIES, discover
from mrict.errors import MrictError


def inspect_dataset(root: str | Path, mask_threshold: float | None = None) -> dict[str, Any]:
    """Per-modality summary of the data set under ``root``.

    Returns ``{"root": ..., "modalities": {"CT": {...}, "MR": {...}}, "problems": [...]}``
    where each problem is ``{"severity": "error"|"warning", "file": ..., "problem": ...}``.
    Errors are files that would stop training; warnings (image without mask) do not.
    Intensities are in native units (HU for CT).
    """
    index = discover(root)
    problems: list[dict[str, str]] = []
    summary: dict[str, Any] = {}
    for modality in MODALITIES:
        if modality not in index.modalities:
            continue
        items = index.modalities[modality]
        if not items:
            problems.append(
                {
                    "severity": "error",
                    "file": str(index.image_dirs[modality]),
                    "problem": "no images",
                }
            )
        patients: set[str] = set()
        n_slices = n_labelled = 0
        sizes: Counter[str] = Counter()
        lo, hi = np.inf, -np.inf
        positive = total = 0
        for item in items:
            try:
                slices, masks = read_item(item, modality, mask_threshold)
            except MrictError as exc:
                problems.append(
                    {
                        "severity": "error",
                        "file": exc.path or str(item.image),
                        "problem": exc.message,
                    }
                )
                continue
            if masks is None and index.mask_dirs.get(modality) is not None:
                problems.append(
                    {
                        "severity": "warning",
                        "file": str(item.image),
                        "problem": "image without mask",
                    }
                )
            for s in slices:
                patients.add(s.patient_id)
                sizes[f"{s.shape[0]}x{s.shape[1]}"] += 1
                lo, hi = min(lo, float(s.pixels.min())), max(hi, float(s.pixels.max()))
            n_slices += len(slices)
            if masks is not None:
                n_labelled += len(slices)
                positive += int(masks.sum())
                total += int(masks.size)
        summary[modality] = {
            "patients": len(patients),
            "slices": n_slices,
            "labelled_slices": n_labelled,
            "sizes": dict(sizes),
            "intensity_min": None if n_slices == 0 else lo,
            "intensity_max": None if n_slices == 0 else hi,
            "intensity_unit": "HU" if modality == "CT" else "scanner units",
            "mask_positive_fraction": positive / total if total else None,
        }
    return {"root": str(index.root), "modalities": summary, "problems": problems}
