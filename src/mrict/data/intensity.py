"""Intensity mappings between native units and the networks' [-1, 1] range.

Conventions (the data contract):

- CT is in Hounsfield units (HU) end to end. The fixed window [-1024, 3000] HU maps linearly
  onto [-1, 1]; values outside are clipped; :func:`unit_to_hu` is the exact inverse inside.
- MRI has no absolute scale: a robust percentile normalisation maps the 0.5th percentile to
  -1 and the 99.5th to +1 (computed over the head where the image is non-zero), clipping
  outside; the two percentiles are kept so a translated image can be written back.
- 8-bit raster CT (PNG/JPEG/TIFF) maps [0, 255] onto the HU window; 16-bit raster CT stores
  HU + 1024 (0 is -1024 HU).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

HU_MIN = -1024.0
HU_MAX = 3000.0
HU_RANGE = HU_MAX - HU_MIN
#: offset stored in 16-bit raster CT files: ``stored = HU + PNG16_HU_OFFSET``
PNG16_HU_OFFSET = 1024.0

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _clip(x: ArrayT, lo: float, hi: float) -> ArrayT:
    if isinstance(x, torch.Tensor):
        return x.clamp(lo, hi)
    return np.clip(x, lo, hi)


def hu_to_unit(hu: ArrayT) -> ArrayT:
    """HU -> [-1, 1] through the fixed window [-1024, 3000] HU (values outside are clipped)."""
    return _clip((hu - HU_MIN) * (2.0 / HU_RANGE) - 1.0, -1.0, 1.0)


def unit_to_hu(x: ArrayT) -> ArrayT:
    """[-1, 1] -> HU; the exact inverse of :func:`hu_to_unit` inside the window."""
    return (_clip(x, -1.0, 1.0) + 1.0) * (HU_RANGE / 2.0) + HU_MIN


def unit_to_01(x: ArrayT) -> ArrayT:
    """[-1, 1] -> [0, 1] (for metrics computed with data_range 1)."""
    return _clip((x + 1.0) * 0.5, 0.0, 1.0)


def uint8_to_unit(x: np.ndarray) -> np.ndarray:
    """8-bit values [0, 255] -> [-1, 1]."""
    return (x.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def unit_to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] -> uint8 [0, 255] (rounded)."""
    return np.rint((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def normalise_mri(
    img: np.ndarray,
    pct: tuple[float, float] = (0.5, 99.5),
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[float, float]]:
    """Robust MRI normalisation: percentiles ``pct`` -> [-1, 1], clipped.

    Percentiles are taken over ``mask`` if given, else over the non-zero pixels (the head),
    else over the whole image. Returns the normalised float32 image and ``(lo, hi)``.
    A constant image maps to -1 everywhere.
    """
    values = img[mask > 0] if mask is not None else img[img > 0]
    if values.size < 16:
        values = img.ravel()
    lo, hi = (float(v) for v in np.percentile(values, pct))
    lo = min(lo, float(img.min())) if pct[0] <= 0 else lo
    if hi - lo < 1e-6:
        return np.full(img.shape, -1.0, dtype=np.float32), (lo, lo + 1.0)
    out = (img.astype(np.float32) - lo) * (2.0 / (hi - lo)) - 1.0
    return np.clip(out, -1.0, 1.0).astype(np.float32), (lo, hi)


def denormalise_mri(x: ArrayT, lo: float, hi: float) -> ArrayT:
    """Inverse of :func:`normalise_mri` for values inside [-1, 1]."""
    return (_clip(x, -1.0, 1.0) + 1.0) * ((hi - lo) / 2.0) + lo
