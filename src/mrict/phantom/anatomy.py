"""Per-patient anatomy: tissue fractions of the atlas under a random smooth deformation,
scaling, rotation and slice position, with 3-D lesions (solid part, necrotic core, oedema)
and their mass effect, plus within-tissue texture fields.

Every pixel holds the fractions of the 12 tissues it covers (partial volume, summing to 1);
masks are derived from the lesion's fraction (> 0.5), so they stay binary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from mrict.phantom.atlas import CSF, GM, N_LABELS, NECROSIS, OEDEMA, TUMOUR, WM, atlas_slices
from mrict.phantom.fractions import (
    AtlasFractions,
    GridIndex,
    atlas_fractions,
    grid_index,
    sample_fractions,
    smoothing_for,
)
from mrict.phantom.lesion import (
    SECOND_LESION_PROBABILITY,
    Lesion,
    draw_lesion,
    edge_fraction,
    sample_radius,
)
from mrict.phantom.texture import smooth_field_2d, texture_field

FOV_MM = 230.0  # field of view of a rendered slice
#: correlation lengths (Gaussian sigma, mm) of the fine and coarse within-tissue texture
TEXTURE_SIGMA_MM = (0.8, 5.0)


@dataclass
class PatientAnatomy:
    """One patient: ``fractions`` (S, 12, N, N) float32 tissue fractions and ``texture``
    (2, S, N, N) float32 unit-variance fine and coarse fields (both released after
    rendering), ``tumour`` / ``oedema`` masks (S, N, N) uint8, pixel spacing and slice
    thickness (= spacing) in mm, and the parameters drawn."""

    fractions: np.ndarray | None
    tumour: np.ndarray
    oedema: np.ndarray
    texture: np.ndarray | None
    spacing_mm: float
    thickness_mm: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        """The dominant tissue of each pixel (S, N, N) uint8 (needs the fractions)."""
        if self.fractions is None:
            raise RuntimeError("the fractions were released after rendering")
        return self.fractions.argmax(1).astype(np.uint8)

    def release(self) -> None:
        """Drop the per-pixel fractions and texture (large) once the images are rendered."""
        self.fractions = None
        self.texture = None


@dataclass(frozen=True)
class _Pose:
    """The patient's similarity transform and elastic displacement of the atlas (mm)."""

    scale: float
    aspect: float
    angle: float
    shift: np.ndarray
    elastic_y: np.ndarray
    elastic_x: np.ndarray
    centre_px: tuple[float, float]

    def atlas_coords(
        self, yy: np.ndarray, xx: np.ndarray, box: tuple[slice, slice] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Atlas pixel coordinates of physical positions ``yy``, ``xx`` (mm; the image
        grid, or its ``box`` window)."""
        ey = self.elastic_y if box is None else self.elastic_y[box]
        ex = self.elastic_x if box is None else self.elastic_x[box]
        y = (yy + ey - self.shift[0]) / (self.scale * self.aspect)
        x = (xx + ex - self.shift[1]) / (self.scale / self.aspect)
        ca, sa = np.cos(self.angle), np.sin(self.angle)
        mm = atlas_slices()[1]
        return (ca * y - sa * x) / mm + self.centre_px[0], (sa * y + ca * x) / mm + self.centre_px[
            1
        ]


def atlas_extent_mm() -> float:
    """Axial distance between the atlas' first and last slice centres, mm."""
    atlas, atlas_mm = atlas_slices()
    return (atlas.shape[0] - 1) * atlas_mm


def max_slices(spacing_mm: float) -> int:
    """The most slices ``spacing_mm`` apart that fit in the atlas' axial extent."""
    return int(atlas_extent_mm() // spacing_mm + 1e-9) + 1


def make_patient(
    rng: np.random.Generator,
    size: int,
    n_slices: int,
    *,
    slice_spacing_mm: float = 3.0,
    tumour_free_fraction: float = 0.2,
    with_tumour: bool = True,
) -> PatientAnatomy:
    """Draw one patient's anatomy at ``size`` x ``size`` pixels over ``n_slices`` contiguous
    slices ``slice_spacing_mm`` apart. The slab is placed so that about
    ``tumour_free_fraction`` of its slices miss the lesion (fewer when the lesion is larger
    than the slab, more when it is smaller); 1.0 draws a patient without a lesion."""
    atlas, atlas_mm = atlas_slices()
    n_atlas = atlas.shape[0]
    if n_slices > max_slices(slice_spacing_mm):
        raise ValueError(f"{n_slices} slices at {slice_spacing_mm} mm do not fit in the atlas")
    spacing = FOV_MM / size
    volume = atlas_fractions(*smoothing_for(spacing, slice_spacing_mm))
    span = slice_spacing_mm * (n_slices - 1)
    z_max = (n_atlas - 1) * atlas_mm

    head = atlas[n_atlas // 2] > 0
    pose = _Pose(
        scale=rng.uniform(0.9, 1.1),
        aspect=rng.uniform(0.95, 1.05),
        angle=np.deg2rad(rng.uniform(-12, 12)),
        shift=rng.uniform(-8, 8, 2),
        elastic_y=smooth_field_2d(rng, size, 3.0),
        elastic_x=smooth_field_2d(rng, size, 3.0),
        centre_px=ndi.center_of_mass(head),
    )
    r = (np.arange(size) - size / 2 + 0.5) * spacing
    yy, xx = np.meshgrid(r, r, indexing="ij")

    lesions: list[Lesion] = []
    if with_tumour and tumour_free_fraction < 1.0:
        cz = rng.uniform(0.2, 0.8) * z_max
        radius = sample_radius(rng)
        centre = _pick_centre(rng, volume, pose, yy, xx, cz, radius, atlas_mm)
        if centre is not None:
            lesions.append(draw_lesion(rng, np.array([cz, *centre]), radius))
    z0 = _place_slab(rng, lesions, n_slices, slice_spacing_mm, tumour_free_fraction, z_max - span)
    z_positions = z0 + slice_spacing_mm * np.arange(n_slices)
    if lesions and rng.random() < SECOND_LESION_PROBABILITY:
        cz = float(rng.uniform(z_positions[0], z_positions[-1]))
        radius = float(rng.uniform(3.0, 0.6 * lesions[0].lobes[0].radius_mm + 3.0))
        centre = _pick_centre(rng, volume, pose, yy, xx, cz, radius, atlas_mm, avoid=lesions[0])
        if centre is not None:
            lesions.append(draw_lesion(rng, np.array([cz, *centre]), radius))

    fractions = np.zeros((n_slices, N_LABELS, size, size), np.float32)
    base = grid_index(volume, *pose.atlas_coords(yy, xx))
    for k, z in enumerate(z_positions):
        _slice_fractions(
            fractions[k],
            volume,
            pose,
            base,
            yy,
            xx,
            z,
            lesions,
            spacing,
            slice_spacing_mm,
            atlas_mm,
        )
    shape = (n_slices, size, size)
    texture = np.stack(
        [
            texture_field(rng, shape, (s / slice_spacing_mm, s / spacing, s / spacing))
            for s in TEXTURE_SIGMA_MM
        ]
    )
    tumour = ((fractions[:, TUMOUR] + fractions[:, NECROSIS]) > 0.5).astype(np.uint8)
    oedema = (fractions[:, OEDEMA] > 0.5).astype(np.uint8)
    params = {
        "slice_positions_mm": z_positions.tolist(),
        "slice_spacing_mm": slice_spacing_mm,
        "scale": pose.scale,
        "aspect": pose.aspect,
        "rotation_deg": float(np.rad2deg(pose.angle)),
        "shift_mm": pose.shift.tolist(),
        "tumour": {
            "present": bool(lesions),
            "tumour_free_fraction": tumour_free_fraction,
            "lesions": [lesion.summary() for lesion in lesions],
        },
        "tumour_free_slices": [
            int(i) for i in np.flatnonzero(tumour.reshape(n_slices, -1).max(1) == 0)
        ],
    }
    return PatientAnatomy(fractions, tumour, oedema, texture, spacing, slice_spacing_mm, params)


def _pick_centre(
    rng: np.random.Generator,
    volume: AtlasFractions,
    pose: _Pose,
    yy: np.ndarray,
    xx: np.ndarray,
    z_mm: float,
    radius: float,
    atlas_mm: float,
    avoid: Lesion | None = None,
) -> np.ndarray | None:
    """An in-plane lesion centre (mm) in the patient's brain at ``z_mm``, deep enough for
    a lesion of ``radius`` (mm; and away from ``avoid``); None if the slice holds no brain."""
    # on every second pixel: a centre needs no finer grid, and this runs once per lesion
    yy, xx = yy[::2, ::2], xx[::2, ::2]
    ys, xs = pose.atlas_coords(yy, xx, (slice(None, None, 2), slice(None, None, 2)))
    f = sample_fractions(volume, z_mm / atlas_mm, ys, xs)
    brain = (f[GM] + f[WM]) > 0.5
    spacing = float(yy[1, 0] - yy[0, 0])
    depth = ndi.distance_transform_edt(brain) * spacing
    ok = depth > min(0.6 * radius, 12.0)
    if avoid is not None:
        cy, cx = avoid.centre_mm[1:]
        ok &= np.hypot(yy - cy, xx - cx) > avoid.extent_mm
    candidates = np.argwhere(ok)
    if len(candidates) == 0:
        candidates = np.argwhere(brain)
    if len(candidates) == 0:
        return None
    i, j = candidates[rng.integers(len(candidates))]
    return np.array([yy[i, j], xx[i, j]])


def _place_slab(
    rng: np.random.Generator,
    lesions: list[Lesion],
    n: int,
    step: float,
    free_fraction: float,
    z0_max: float,
) -> float:
    """First slice position (mm) of a slab of ``n`` slices ``step`` apart, so that about
    ``free_fraction`` of its slices lie beyond the main lesion's z extent."""
    if not lesions:
        return float(rng.uniform(0, z0_max))
    lo, hi = lesions[0].z_range_mm()
    # a slice within a tenth of the extent of the lesion's pole cuts too little of it to
    # hold a mask pixel: count only slices that cut the lesion properly
    margin = 0.1 * (hi - lo)
    lo, hi = lo + margin, hi - margin
    want_in = max(1, n - int(round(free_fraction * n)))
    starts = np.linspace(0.0, z0_max, 256) if z0_max > 0 else np.zeros(1)
    z = starts[:, None] + step * np.arange(n)[None, :]
    hits = ((z > lo) & (z < hi)).sum(1)
    if not (hits >= 1).any():
        return float(np.clip((lo + hi) / 2 - step * (n - 1) / 2, 0, z0_max))
    gap = np.where(hits >= 1, np.abs(hits - want_in), n + 1)
    best = np.flatnonzero(gap == gap.min())
    return float(starts[best[rng.integers(len(best))]])


def _slice_fractions(
    out: np.ndarray,
    volume: AtlasFractions,
    pose: _Pose,
    base: GridIndex,
    yy: np.ndarray,
    xx: np.ndarray,
    z_mm: float,
    lesions: list[Lesion],
    spacing: float,
    thickness: float,
    atlas_mm: float,
) -> None:
    """Tissue fractions of one slice into ``out`` (12, N, N) float32, zero on entry: the
    deformed atlas (``base``: where the grid ``yy``, ``xx`` falls in it), displaced by the
    lesions' mass effect (each within its reach; a later lesion's window replaces an
    earlier one's), with each lesion's tissues mixed in."""
    grid = base
    for lesion in lesions:
        _, cy, cx = lesion.centre_mm
        dz = z_mm - lesion.centre_mm[0]
        radius = 1.3 * lesion.lobes[0].radius_mm
        # beyond 3.5 radii the displacement is under 0.3 % of the distance: negligible
        box = _box(yy, xx, cy, cx, 3.5 * radius) if abs(dz) < 3.5 * radius else None
        if box is None:
            continue
        # sample closer to the centre, which pushes the anatomy outward
        by, bx = yy[box], xx[box]
        d2 = (by - cy) ** 2 + (bx - cx) ** 2 + dz * dz
        g = 1.0 - lesion.mass_effect * np.exp(-d2 / (2 * radius * radius))
        ys, xs = pose.atlas_coords(cy + (by - cy) * g, cx + (bx - cx) * g, box)
        grid = grid.replace(*box, grid_index(volume, ys, xs))
    sample_fractions(volume, z_mm / atlas_mm, grid, out=out)
    for lesion in lesions:
        _mix_lesion(out, lesion, yy, xx, z_mm, spacing, thickness)


def _box(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, reach: float
) -> tuple[slice, slice] | None:
    """Rows and columns of the grid (``yy``, ``xx`` in mm) within ``reach`` mm of (cy, cx)."""
    rows = np.flatnonzero(np.abs(yy[:, 0] - cy) < reach)
    cols = np.flatnonzero(np.abs(xx[0] - cx) < reach)
    if len(rows) == 0 or len(cols) == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _mix_lesion(
    f: np.ndarray,
    lesion: Lesion,
    yy: np.ndarray,
    xx: np.ndarray,
    z_mm: float,
    spacing: float,
    thickness: float,
) -> None:
    """Mix ``lesion`` into the fractions ``f`` (12, N, N) in place, within its bounding box.

    The lesion takes the brain part of a pixel (CSF, grey and white matter). Its edge is a
    ramp one pixel wide in-plane, widened where the surface is inclined to the slice by the
    slab it crosses (``thickness * |n_z|``: through-plane partial volume). Oedema then
    replaces white and grey matter up to the lesion's reach into each."""
    cz, cy, cx = lesion.centre_mm
    reach = lesion.extent_mm
    if abs(z_mm - cz) > reach + thickness:
        return
    window = _box(yy, xx, cy, cx, reach)
    if window is None:
        return
    by, bx = yy[window], xx[window]
    dz = z_mm - cz
    n_z = np.abs(dz) / np.sqrt(dz * dz + (by - cy) ** 2 + (bx - cx) ** 2 + 1e-6)
    width = np.sqrt(spacing * spacing + (thickness * n_z) ** 2)
    outside_mm = lesion.signed_distance(z_mm, by, bx)
    body = edge_fraction(outside_mm, width)
    core = np.zeros_like(body)
    if lesion.necrotic_fraction > 0:
        core = np.minimum(edge_fraction(lesion.core_signed_distance(z_mm, by, bx), width), body)
    sub = f[(slice(None), *window)]
    brain = sub[CSF] + sub[GM] + sub[WM]
    for label in (CSF, GM, WM):
        sub[label] *= 1.0 - body
    sub[TUMOUR] += (body - core) * brain
    sub[NECROSIS] += core * brain
    # oedema: a smooth falloff with the distance outside the lesion surface
    for label, reach_mm in ((WM, lesion.oedema_wm_mm), (GM, lesion.oedema_gm_mm)):
        weight = np.clip((reach_mm - outside_mm) / 2.0 + 0.5, 0.0, 1.0) * (outside_mm > -spacing)
        moved = sub[label] * weight
        sub[label] -= moved
        sub[OEDEMA] += moved
