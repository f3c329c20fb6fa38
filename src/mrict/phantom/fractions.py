"""Tissue fractions of the atlas (soft labels) and their sampling at physical positions.

The shipped atlas is a hard 1 mm label grid; sampling it with nearest neighbour gives
staircase boundaries. Here each tissue's indicator is smoothed (in-plane by a sub-voxel
anti-aliasing kernel plus the output pixel's footprint, along z by the slice profile) and
sampled with trilinear interpolation, so a boundary pixel holds the fractions of the
tissues it covers and the fractions of every pixel sum to 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from mrict.phantom.atlas import atlas_slices

#: in-plane anti-aliasing of the 1 mm atlas grid (Gaussian sigma, mm)
ATLAS_SIGMA_MM = 0.6
N_ATLAS_LABELS = 9


@dataclass(frozen=True)
class AtlasFractions:
    """Smoothed tissue fractions of the atlas, label-major and padded by one voxel of air:
    ``values`` (Z, 9, (H + 2) * (W + 2)) float32 (100 MB) summing to 1 over labels; ``pure_air``
    (Z, (H + 2) * (W + 2)) marks voxels whose 2 x 2 x 2 block ahead is all air (so a
    trilinear sample there is air and can be skipped)."""

    values: np.ndarray
    pure_air: np.ndarray
    height: int
    width: int


@lru_cache(maxsize=4)  # data sets of several pixel sizes in one process
def atlas_fractions(sigma_xy_mm: float, sigma_z_mm: float) -> AtlasFractions:
    """The atlas' tissue fractions after Gaussian smoothing of ``sigma_xy_mm`` in-plane and
    ``sigma_z_mm`` along z (mm)."""
    atlas, atlas_mm = atlas_slices()
    padded = np.pad(atlas, ((0, 0), (1, 1), (1, 1)))
    n_z, h, w = padded.shape
    sigma = (sigma_z_mm / atlas_mm, sigma_xy_mm / atlas_mm, sigma_xy_mm / atlas_mm)
    values = np.empty((n_z, N_ATLAS_LABELS, h * w), np.float32)
    air = np.zeros(padded.shape, bool)
    for label in range(N_ATLAS_LABELS):
        indicator = (padded == label).astype(np.float32)
        f = ndi.gaussian_filter(indicator, sigma, mode="nearest", truncate=3.0)
        values[:, label] = f.reshape(n_z, -1)
        if label == 0:
            air = f > 1.0 - 1e-5
    # the indicators sum to 1 and the filter is linear: so do the smoothed fractions
    block = ndi.minimum_filter(air, size=2, origin=-1, mode="nearest")
    values.setflags(write=False)
    return AtlasFractions(values, block.reshape(n_z, -1), h, w)


def smoothing_for(pixel_mm: float, thickness_mm: float) -> tuple[float, float]:
    """In-plane and through-plane smoothing (sigma, mm, rounded to 0.05 mm so that a data
    set reuses one cached volume) for output pixels of ``pixel_mm`` and slices of
    ``thickness_mm``: the atlas anti-aliasing combined with a box footprint of the pixel /
    slice (variance ``w**2 / 12``)."""
    xy = float(np.sqrt(ATLAS_SIGMA_MM**2 + pixel_mm**2 / 12))
    z = float(np.sqrt(ATLAS_SIGMA_MM**2 + thickness_mm**2 / 12))
    return round(xy * 20) / 20, round(z * 20) / 20


@dataclass
class GridIndex:
    """Where the pixels of a grid fall in the (padded) atlas plane: ``idx`` the flat index
    of the lower corner, ``wy`` / ``wx`` the bilinear weights, all (H * W,); ``shape`` (H, W)."""

    idx: np.ndarray
    wy: np.ndarray
    wx: np.ndarray
    shape: tuple[int, ...]

    def replace(self, rows: slice, cols: slice, other: GridIndex) -> GridIndex:
        """A copy whose ``rows`` x ``cols`` window is ``other`` (an index of that window)."""
        h, w = self.shape
        flat = (np.arange(h)[rows, None] * w + np.arange(w)[None, cols]).ravel()
        out = GridIndex(self.idx.copy(), self.wy.copy(), self.wx.copy(), self.shape)
        out.idx[flat], out.wy[flat], out.wx[flat] = other.idx, other.wy, other.wx
        return out


def grid_index(atlas: AtlasFractions, ys: np.ndarray, xs: np.ndarray) -> GridIndex:
    """The :class:`GridIndex` of atlas pixel coordinates ``ys``, ``xs`` (H, W); positions
    outside the atlas land on its air border."""
    h, w = atlas.height, atlas.width
    fy = ys.ravel() + 1  # +1: the padding
    fx = xs.ravel() + 1
    y0 = np.clip(fy.astype(np.intp), 0, h - 2)  # truncation = floor for fy >= 0
    x0 = np.clip(fx.astype(np.intp), 0, w - 2)
    wy = np.clip(fy - y0, 0, 1).astype(np.float32)
    wx = np.clip(fx - x0, 0, 1).astype(np.float32)
    return GridIndex(y0 * w + x0, wy, wx, ys.shape)


def sample_fractions(
    atlas: AtlasFractions,
    z: float,
    ys: np.ndarray | GridIndex,
    xs: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Trilinear sample of the atlas fractions at atlas slice ``z`` (fractional index) and
    atlas pixel coordinates ``ys``, ``xs`` (H, W), or a precomputed :class:`GridIndex`;
    positions outside the atlas are air. Returns (9, H, W) float32 fractions summing to 1,
    written into ``out`` ((>= 9, H, W) float32, zero beyond its first 9 channels) if given."""
    grid = ys if isinstance(ys, GridIndex) else grid_index(atlas, ys, xs)
    n_z = atlas.values.shape[0]
    z = float(np.clip(z, 0, n_z - 1))
    z0 = min(int(np.floor(z)), n_z - 2)
    wz = np.float32(z - z0)
    idx, w = grid.idx, atlas.width
    if out is None:
        out = np.zeros((N_ATLAS_LABELS, *grid.shape), np.float32)
    flat = out.reshape(out.shape[0], -1)[:N_ATLAS_LABELS]
    flat[:] = 0.0
    flat[0] = 1.0
    busy = np.flatnonzero(~(atlas.pure_air[z0][idx] & atlas.pure_air[z0 + 1][idx]))
    if busy.size:
        plane = atlas.values[z0] * (1 - wz) + atlas.values[z0 + 1] * wz
        i, wy, wx = idx[busy], grid.wy[busy], grid.wx[busy]
        top = np.take(plane, i, axis=1)
        top += (np.take(plane, i + 1, axis=1) - top) * wx
        bottom = np.take(plane, i + w, axis=1)
        bottom += (np.take(plane, i + w + 1, axis=1) - bottom) * wx
        top += (bottom - top) * wy
        flat[:, busy] = top
    return out[:N_ATLAS_LABELS]
