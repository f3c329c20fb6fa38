"""Smooth random fields: the elastic deformation of a patient, MR bias fields and
within-tissue texture."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _linear_along(a: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Resample ``a`` along ``axis`` to ``n`` samples by linear interpolation, the first and
    last samples aligned with the input's (corner-aligned)."""
    m = a.shape[axis]
    if m == n:
        return a
    pos = np.linspace(0.0, m - 1, n)
    i0 = np.minimum(pos.astype(np.intp), m - 2)
    shape = [1] * a.ndim
    shape[axis] = n
    w = (pos - i0).astype(a.dtype).reshape(shape)
    lo = np.take(a, i0, axis=axis)
    return lo + (np.take(a, i0 + 1, axis=axis) - lo) * w


def upsample(grid: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Smoothly resample a coarse field to ``shape`` (trailing two axes; leading axes kept):
    cubic up to at most 32 samples per axis, then linear (cheap at any size)."""
    h, w = shape[-2:]
    gh, gw = grid.shape[-2:]
    mid = (min(h, max(gh, 32)), min(w, max(gw, 32)))
    if mid != (gh, gw):
        factors = (1,) * (grid.ndim - 2) + (mid[0] / gh, mid[1] / gw)
        grid = ndi.zoom(grid, factors, order=3, mode="nearest", grid_mode=False)
    return _linear_along(_linear_along(grid, h, grid.ndim - 2), w, grid.ndim - 1)


def smooth_field_2d(
    rng: np.random.Generator, n: int, amplitude: float, coarse: int = 6
) -> np.ndarray:
    """A smooth random field (n, n) with values roughly in [-amplitude, amplitude]."""
    return upsample(rng.uniform(-1, 1, (coarse, coarse)), (n, n)) * amplitude


def texture_field(
    rng: np.random.Generator, shape: tuple[int, int, int], sigma_px: tuple[float, float, float]
) -> np.ndarray:
    """Gaussian random field (S, H, W) float32 with zero mean and unit standard deviation,
    correlated by a Gaussian of ``sigma_px`` (slices, rows, columns). Fields coarser than
    3 px are drawn on a grid subsampled to a sigma of 1.5-3 px and interpolated linearly,
    which keeps them cheap."""
    s, h, w = shape
    step = max(1, int(min(sigma_px[1], sigma_px[2]) / 1.5))
    grid = (s, -(-h // step) + 1, -(-w // step) + 1)
    noise = rng.standard_normal(grid, dtype=np.float32)
    # a correlation below a third of a slice is none: skip that axis
    sigma = (sigma_px[0] if sigma_px[0] > 0.3 else 0.0, sigma_px[1] / step, sigma_px[2] / step)
    field = ndi.gaussian_filter(noise, sigma, mode="wrap", truncate=3.0)
    if step > 1:
        span = ((grid[1] - 1) * step + 1, (grid[2] - 1) * step + 1)
        field = _linear_along(_linear_along(field, span[0], 1), span[1], 2)
    field = field[:, :h, :w]
    field -= field.mean()
    return (field / max(float(field.std()), 1e-12)).astype(np.float32, copy=False)
