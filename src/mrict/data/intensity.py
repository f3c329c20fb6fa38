"""Intensity mappings between native units and the networks' [-1, 1] range.

Conventions (the data contract):

- CT is in Hounsfield units (HU) end to end; files and metrics keep the fixed range
  [-1024, 3000] HU (values outside are clipped). The networks see CT through a monotone,
  piecewise-linear map onto [-1, 1] (``CT_MAPS``): the default ``"soft_tissue"`` map gives
  the brain's range [-100, 200] HU half of [-1, 1] (1 unit per 300 HU, so a 50 HU tumour
  contrast is 0.17 units), air [-1024, -100] HU 0.3 units and bone [200, 3000] HU 0.7
  units. ``"linear"`` is the plain linear map of the whole range (0-100 HU is then 5% of
  it). :func:`unit_to_hu` is the exact inverse of :func:`hu_to_unit` inside the range.
- MRI has no absolute scale: a robust percentile normalisation maps the 0.5th percentile to
  -1 and the 99.5th to +1 (computed over the head where the image is non-zero), clipping
  outside; the two percentiles are kept so a translated image can be written back.
- 8-bit raster CT (PNG/JPEG/TIFF) maps [0, 255] onto the HU range; 16-bit raster CT stores
  HU + 1024 (0 is -1024 HU).
- Metrics that need CT in [0, 1] use :func:`hu_to_01`, the linear SynthRAD convention
  ``(HU + 1024) / 4024``, independent of the network map.
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


#: CT network maps: (HU knots, [-1, 1] knots), both strictly increasing, from -1024 HU -> -1
#: to 3000 HU -> 1; linear between knots
CT_MAPS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "soft_tissue": ((HU_MIN, -100.0, 200.0, HU_MAX), (-1.0, -0.7, 0.3, 1.0)),
    "linear": ((HU_MIN, HU_MAX), (-1.0, 1.0)),
}
DEFAULT_CT_MAP = "soft_tissue"


def _clip(x: ArrayT, lo: float, hi: float) -> ArrayT:
    if isinstance(x, torch.Tensor):
        return x.clamp(lo, hi)
    return np.clip(x, lo, hi)


def _piecewise(x: ArrayT, xs: tuple[float, ...], ys: tuple[float, ...]) -> ArrayT:
    """Piecewise-linear interpolation through the knots (xs, ys), clipped to their ends."""
    x = _clip(x, xs[0], xs[-1])
    if isinstance(x, torch.Tensor):
        out = torch.full_like(x, ys[0])
        for x0, x1, y0, y1 in zip(xs[:-1], xs[1:], ys[:-1], ys[1:], strict=True):
            seg = (x.clamp(x0, x1) - x0) * ((y1 - y0) / (x1 - x0))
            out = out + seg
        return out
    return np.interp(x, xs, ys).astype(np.result_type(x, np.float32), copy=False)


def _ct_map(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        return CT_MAPS[name]
    except KeyError:
        raise ValueError(f"unknown CT map {name!r} (choose from {', '.join(CT_MAPS)})") from None


def hu_to_unit(hu: ArrayT, ct_map: str = DEFAULT_CT_MAP) -> ArrayT:
    """HU -> [-1, 1] through the CT network map ``ct_map`` (values outside [-1024, 3000]
    HU are clipped)."""
    xs, ys = _ct_map(ct_map)
    return _piecewise(hu, xs, ys)


def unit_to_hu(x: ArrayT, ct_map: str = DEFAULT_CT_MAP) -> ArrayT:
    """[-1, 1] -> HU; the exact inverse of :func:`hu_to_unit` (same ``ct_map``)."""
    xs, ys = _ct_map(ct_map)
    return _piecewise(x, ys, xs)


def remap_ct(x: ArrayT, src: str, dst: str) -> ArrayT:
    """CT in the network map ``src`` -> the same HU in the map ``dst`` (identity if equal)."""
    if src == dst:
        return x
    return hu_to_unit(unit_to_hu(x, src), dst)


def hu_to_01(hu: ArrayT) -> ArrayT:
    """HU -> [0, 1] linearly over [-1024, 3000] HU (the SynthRAD metric convention)."""
    return _clip((hu - HU_MIN) / HU_RANGE, 0.0, 1.0)


def unit_to_01(x: ArrayT) -> ArrayT:
    """[-1, 1] -> [0, 1] (for metrics computed with data_range 1)."""
    return _clip((x + 1.0) * 0.5, 0.0, 1.0)


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
