"""The in-memory unit of data: one 2-D slice with where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Format = Literal["dicom", "nifti", "png", "tiff", "jpeg"]
Modality = Literal["CT", "MR"]

#: refuse any slice larger than this many pixels before allocating it
MAX_SLICE_PIXELS = 8192 * 8192
#: refuse any file whose decoded pixels would exceed this many bytes
MAX_DECODED_BYTES = 2**31


@dataclass
class ImageSlice:
    """One axial slice.

    ``pixels`` is (H, W) float32 in native units: HU for CT, scanner units for MR, raw stored
    values for masks. ``index`` is the slice/frame/page index inside ``source``. ``meta``
    holds what a writer needs to produce a file of the same format (DICOM header, NIfTI
    affine and shape, raster bit depth).
    """

    pixels: np.ndarray
    patient_id: str
    source: Path
    index: int
    fmt: Format
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])
