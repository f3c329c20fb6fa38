"""The file-name rule for patient ids (used when a file carries no DICOM PatientID)."""

from __future__ import annotations

import re
from pathlib import Path

_SLICE_SUFFIX = re.compile(r"^(?P<patient>.+?)[_-]\d+$")
_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".png", ".tif", ".tiff", ".jpg", ".jpeg")


def strip_suffix(name: str) -> str:
    """File name without its image extension (``a.nii.gz`` -> ``a``)."""
    lower = name.lower()
    for suffix in _SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def patient_id_from_name(path: str | Path) -> str:
    """Patient id from a file name: the name without extension and without a trailing
    ``_<digits>`` or ``-<digits>`` slice number (``P007_012.png`` -> ``P007``).

    NIfTI volumes hold one patient each: ``P007.nii.gz`` -> ``P007``. A name that is only
    digits (``12.png``) falls back to its parent folder's name.
    """
    path = Path(path)
    stem = strip_suffix(path.name)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return stem
    match = _SLICE_SUFFIX.match(stem)
    if match:
        return match.group("patient")
    if stem.isdigit() and path.parent.name:
        return path.parent.name
    return stem
