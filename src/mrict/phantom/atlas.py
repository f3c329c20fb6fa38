"""The shipped tissue atlas (derived from the Colin27 T1 head; see assets/ATTRIBUTION.md)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

AIR, SCALP, FAT, OUTER_TABLE, DIPLOE, INNER_TABLE, CSF, GM, WM = range(9)
TUMOUR, NECROSIS, OEDEMA = 9, 10, 11
N_LABELS = 12
LABEL_NAMES = (
    "air",
    "scalp/muscle",
    "fat",
    "outer table",
    "diploe",
    "inner table",
    "CSF",
    "grey matter",
    "white matter",
    "tumour",
    "necrosis",
    "oedema",
)
BRAIN_LABELS = (CSF, GM, WM)


@lru_cache(maxsize=1)
def atlas_slices() -> tuple[np.ndarray, float]:
    """Axial label images (Z, H, W) uint8 (rows anterior -> posterior, 1 mm pixels) and the
    pixel size in mm."""
    ref = resources.files("mrict.phantom") / "assets" / "colin27_labels.npz"
    with resources.as_file(ref) as path, np.load(path) as data:
        labels = data["labels"]  # (X, Y, Z) in RAS
        zooms = data["zooms"]
    images = np.ascontiguousarray(np.transpose(labels, (2, 1, 0))[:, ::-1, :])
    images.setflags(write=False)
    return images, float(zooms[0])
