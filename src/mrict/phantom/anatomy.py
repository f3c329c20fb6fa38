"""Per-patient anatomy: atlas slices under a random smooth deformation, scaling, rotation
and slice position, with a tumour (solid part, necrotic core, oedema) and its mass effect."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from mrict.phantom.atlas import BRAIN_LABELS, GM, NECROSIS, OEDEMA, TUMOUR, WM, atlas_slices

FOV_MM = 230.0  # field of view of a rendered slice


@dataclass
class PatientAnatomy:
    """Label images of one patient: ``labels`` (S, N, N) uint8, ``tumour`` / ``oedema``
    masks (S, N, N) uint8, pixel spacing and slice thickness in mm, and the parameters
    drawn (for the manifest)."""

    labels: np.ndarray
    tumour: np.ndarray
    oedema: np.ndarray
    spacing_mm: float
    thickness_mm: float
    params: dict[str, Any] = field(default_factory=dict)


def _smooth_field(
    rng: np.random.Generator, n: int, amplitude: float, coarse: int = 6
) -> np.ndarray:
    """A smooth random field (n, n) with values roughly in [-amplitude, amplitude]."""
    grid = rng.uniform(-1, 1, (coarse, coarse))
    return ndi.zoom(grid, n / coarse, order=3, mode="nearest")[:n, :n] * amplitude


def make_patient(
    rng: np.random.Generator,
    size: int,
    n_slices: int,
    *,
    tumour_free_fraction: float = 0.2,
    with_tumour: bool = True,
) -> PatientAnatomy:
    """Draw one patient's anatomy at ``size`` x ``size`` pixels over ``n_slices`` slices."""
    atlas, atlas_mm = atlas_slices()
    n_atlas, h, w = atlas.shape
    spacing = FOV_MM / size
    step = float(min(3.0, max(1.0, (n_atlas - 4) / max(n_slices, 1))))
    span = step * (n_slices - 1)
    z0 = rng.uniform(0, max(n_atlas - 1 - span, 0))
    z_positions = z0 + step * np.arange(n_slices)

    scale = rng.uniform(0.9, 1.1)
    aspect = rng.uniform(0.95, 1.05)
    angle = np.deg2rad(rng.uniform(-12, 12))
    shift = rng.uniform(-8, 8, 2)  # mm
    # pixel centres in mm, relative to the image centre (rows = y, cols = x)
    r = (np.arange(size) - size / 2 + 0.5) * spacing
    yy, xx = np.meshgrid(r, r, indexing="ij")
    elastic_y = _smooth_field(rng, size, 3.0)
    elastic_x = _smooth_field(rng, size, 3.0)
    head = atlas[n_atlas // 2] > 0
    cy, cx = ndi.center_of_mass(head)

    tumour_on = with_tumour
    tumour_params: dict[str, Any] = {"present": bool(tumour_on)}
    if tumour_on:
        radius = rng.uniform(8.0, 22.0)  # mm, sphere-equivalent
        kc = rng.uniform(0.25, 0.75) * (n_slices - 1)
        harmonics = [(m, rng.uniform(0, 0.18), rng.uniform(0, 2 * np.pi)) for m in (2, 3, 4)]
        necrotic = bool(rng.random() < 0.6 and radius > 12)
        tumour_params.update(
            radius_mm=radius,
            centre_slice=kc,
            necrotic_fraction=rng.uniform(0.3, 0.6) if necrotic else 0.0,
            oedema_wm_mm=rng.uniform(5.0, 15.0),
            oedema_gm_mm=rng.uniform(1.0, 3.0),
            mass_effect=rng.uniform(0.25, 0.55),
            harmonics=[[m, a, p] for m, a, p in harmonics],
            tumour_free_fraction=tumour_free_fraction,
        )
    free = rng.random(n_slices) < tumour_free_fraction if tumour_on else np.ones(n_slices, bool)

    labels = np.zeros((n_slices, size, size), np.uint8)
    tumour = np.zeros_like(labels)
    oedema = np.zeros_like(labels)
    # the tumour centre is chosen in the unperturbed middle slice, inside the brain
    centre = None
    if tumour_on:
        mid = _sample_labels(
            atlas,
            z_positions[int(round(kc))],
            yy,
            xx,
            scale,
            aspect,
            angle,
            shift,
            elastic_y,
            elastic_x,
            cy,
            cx,
            atlas_mm,
        )
        brain = np.isin(mid, (GM, WM))
        depth = ndi.distance_transform_edt(brain) * spacing
        candidates = np.argwhere(depth > min(radius * 0.5, 10.0))
        if len(candidates) == 0:
            candidates = np.argwhere(brain)
        if len(candidates):
            centre = candidates[rng.integers(len(candidates))].astype(float)
            tumour_params["centre_px"] = centre.tolist()
    for k, z in enumerate(z_positions):
        ty, tx = yy, xx
        rk = 0.0
        if centre is not None and not free[k]:
            dz = (k - tumour_params["centre_slice"]) * step
            rk = float(np.sqrt(max(tumour_params["radius_mm"] ** 2 - dz**2, 0.0)))
        if rk > 1.0:
            # mass effect: sample closer to the centre, which pushes anatomy outward
            c_mm = (centre - size / 2 + 0.5) * spacing
            dy, dx = yy - c_mm[0], xx - c_mm[1]
            d2 = dy**2 + dx**2
            g = 1.0 - tumour_params["mass_effect"] * np.exp(-d2 / (2 * (1.3 * rk) ** 2))
            ty, tx = c_mm[0] + dy * g, c_mm[1] + dx * g
        lab = _sample_labels(
            atlas, z, ty, tx, scale, aspect, angle, shift, elastic_y, elastic_x, cy, cx, atlas_mm
        )
        if rk > 1.0:
            lab, t_mask, o_mask = _paint_tumour(lab, centre, rk, tumour_params, spacing)
            tumour[k], oedema[k] = t_mask, o_mask
        labels[k] = lab
    params = {
        "slice_positions_mm": z_positions.tolist(),
        "scale": scale,
        "aspect": aspect,
        "rotation_deg": float(np.rad2deg(angle)),
        "shift_mm": shift.tolist(),
        "tumour": tumour_params,
        "tumour_free_slices": [
            int(i) for i in np.flatnonzero(tumour.reshape(n_slices, -1).max(1) == 0)
        ],
    }
    return PatientAnatomy(labels, tumour, oedema, spacing, step, params)


def _sample_labels(atlas, z, yy, xx, scale, aspect, angle, shift, ey, ex, cy, cx, atlas_mm):
    """Nearest-neighbour sample of the atlas at physical positions (mm) after the inverse
    of the patient's similarity transform and elastic displacement."""
    y = (yy + ey - shift[0]) / (scale * aspect)
    x = (xx + ex - shift[1]) / (scale / aspect)
    ca, sa = np.cos(angle), np.sin(angle)
    ys = (ca * y - sa * x) / atlas_mm + cy
    xs = (sa * y + ca * x) / atlas_mm + cx
    zi = int(np.clip(round(z), 0, atlas.shape[0] - 1))
    return ndi.map_coordinates(atlas[zi], [ys, xs], order=0, mode="constant", cval=0).astype(
        np.uint8
    )


def _paint_tumour(lab: np.ndarray, centre: np.ndarray, rk: float, p: dict, spacing: float):
    n = lab.shape[0]
    idx = np.arange(n)
    dy = (idx[:, None] - centre[0]) * spacing
    dx = (idx[None, :] - centre[1]) * spacing
    dist = np.hypot(dy, dx)
    phi = np.arctan2(dy, dx)
    boundary = rk * (1 + sum(a * np.cos(m * phi + ph) for m, a, ph in p["harmonics"]))
    brain = np.isin(lab, BRAIN_LABELS)
    solid = (dist < boundary) & brain
    necrotic = solid & (dist < boundary * p["necrotic_fraction"])
    # oedema spreads into white matter much further than into grey matter
    outside = ~solid
    d_out = (
        ndi.distance_transform_edt(~solid) * spacing if solid.any() else np.full(lab.shape, np.inf)
    )
    oed = outside & (
        ((lab == WM) & (d_out < p["oedema_wm_mm"])) | ((lab == GM) & (d_out < p["oedema_gm_mm"]))
    )
    out = lab.copy()
    out[oed] = OEDEMA
    out[solid] = TUMOUR
    out[necrotic] = NECROSIS
    return out, solid.astype(np.uint8), oed.astype(np.uint8)
