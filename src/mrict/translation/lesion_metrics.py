"""Lesion-level translation metrics: fidelity inside the tumour, the brain and the bone.

Whole-head MAE/PSNR/SSIM hide what matters for tumour work (a translation can get the skull
and background right and the lesion wrong). These metrics score a translation region by
region against paired ground truth, and score the lesion without ground truth through a
segmenter trained on real target images.

**Regions** (per slice, (H, W) bool), defined only from the ground-truth CT in HU and the
tumour mask, and used for both directions (MR -> CT and CT -> MR):

* ``head``: :func:`mrict.translation.metrics.head_mask_from_ct` (HU > -500, holes filled,
  largest component).
* ``bone``: ``head`` and GT CT > :data:`BONE_HU` (300 HU), not tumour.
* ``brain``: the intracranial soft tissue. The cavity is the bone mask closed with a disc
  of radius :data:`SKULL_CLOSE_PX` (2 px), hole-filled, bone removed; when the skull ring is
  open (thin temporal bone, a gap after thresholding: filling then adds less than
  :data:`MIN_CAVITY_FRACTION` of the head) the cavity is the convex hull of the bone pixels
  minus the bone instead. The cavity is eroded by :data:`BRAIN_ERODE_PX` (2 px, drops the
  partial-volume rim at the inner table), restricted to GT HU in :data:`SOFT_TISSUE_HU`
  ([-100, 200] HU), and the tumour grown by :data:`TUMOUR_MARGIN_PX` (1 px) is removed.
* ``tumour``: the mask (inside the head).
* ``ring``: the band from :data:`TUMOUR_MARGIN_PX` to ``TUMOUR_MARGIN_PX + RING_PX`` (1-4 px)
  around the tumour (dilations by a disc), inside ``brain``.

**Aggregation**: pixels are pooled over all slices (every pixel weighs the same; slices
without tumour contribute no tumour pixels). MAE = mean |pred - GT| over a region's pooled
pixels; medians and means likewise pooled. The tumour-to-brain contrast is
``median(tumour) - median(brain)`` with the brain pooled over the slices that contain
tumour only (``brain_median_*`` is that reference); ``*_ring_*`` is the same against the
ring. ``contrast_ratio`` = contrast(pred) / contrast(GT). Texture: the high-pass residual
``x - G(x * w) / G(w)`` (a Gaussian of sigma :data:`HIGHPASS_SIGMA_PX` = 1.5 px normalised
over the brain mask ``w``, so skull and tumour do not leak into the smoothing), its
population SD over the pooled brain pixels; 0 for a constant, about the amplitude for a
checkerboard. The same residual is also pooled separately over the brain interior (more
than :data:`BRAIN_INTERIOR_PX` = 4 px from the brain region's edge) and the rim next to
the skull, so a misplaced bone edge is not read as tissue texture.

**Units**: MR -> CT in HU (pred and GT clipped to [-1024, 3000] HU), keys end in ``_hu``.
CT -> MR on the normalised MR intensities: MAE in [0, 1] units (half the [-1, 1]
difference, as :func:`mrict.translation.metrics.unit_metrics`), medians, contrasts, SD and
means in [-1, 1] units. ``*_pred`` is the translation, ``*_gt`` the ground truth. A figure
whose region is empty is ``None``.

**Segmenter Dice** (no ground truth needed, a lesion score for unpaired data): a U-Net trained
on real target images is applied, through :func:`mrict.segmentation.predict.predict_masks`,
to source slices translated into the target modality and scored against the source masks:
``dice`` is the mean over patients of each patient's Dice pooled over its slices,
``slice_dice`` the mean over slices; cases with empty mask and empty prediction are
excluded (:mod:`mrict.segmentation.metrics` policy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from mrict.data.intensity import HU_MAX, HU_MIN
from mrict.errors import MrictError
from mrict.translation.metrics import head_mask_from_ct

if TYPE_CHECKING:
    from mrict.segmentation.predict import Segmenter

BONE_HU = 300.0
SOFT_TISSUE_HU = (-100.0, 200.0)
SKULL_CLOSE_PX = 2
MIN_CAVITY_FRACTION = 0.2
BRAIN_ERODE_PX = 2
TUMOUR_MARGIN_PX = 1
RING_PX = 3
HIGHPASS_SIGMA_PX = 1.5
BRAIN_INTERIOR_PX = 4

PROTOCOL = (
    f"Regions from the GT CT and the tumour mask: bone = GT > {BONE_HU:.0f} HU in the head; "
    "brain = intracranial cavity (skull closed and filled, or the bone's convex hull if "
    f"open) eroded {BRAIN_ERODE_PX} px, GT in [{SOFT_TISSUE_HU[0]:.0f}, "
    f"{SOFT_TISSUE_HU[1]:.0f}] HU, minus the tumour grown "
    f"{TUMOUR_MARGIN_PX} px; ring = {TUMOUR_MARGIN_PX}-{TUMOUR_MARGIN_PX + RING_PX} px band "
    "around the tumour in the brain. Pixels pooled over slices; contrast = median tumour - "
    "median brain of the tumour slices; texture = SD over brain of the image minus its "
    f"brain-normalised Gaussian (sigma {HIGHPASS_SIGMA_PX} px), also split into the brain "
    f"interior (more than {BRAIN_INTERIOR_PX} px from the brain region's edge) and its rim. "
    "MR->CT in HU; CT->MR: MAE in "
    "[0, 1] units, the rest in [-1, 1] units."
)
SEGMENTER_PROTOCOL = (
    "Dice = mean over patients of each patient's Dice pooled over its labelled slices "
    "(patients with empty mask and prediction excluded); slice_dice = mean over slices "
    "(both-empty slices excluded). Segmenter applied through mrict's predict_masks."
)


def _disc(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (yy**2 + xx**2) <= radius**2


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0 or not mask.any():
        return mask.copy()
    return ndimage.binary_dilation(mask, _disc(radius))


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask.copy()
    return ndimage.binary_erosion(mask, _disc(radius), border_value=0)


def _close(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing by a disc, padded so the image border does not cut it."""
    padded = np.pad(mask, radius + 1)
    closed = ndimage.binary_closing(padded, _disc(radius))
    return closed[radius + 1 : -(radius + 1), radius + 1 : -(radius + 1)]


@dataclass(frozen=True)
class Regions:
    """Region masks of one slice, each (H, W) bool (see the module docstring)."""

    head: np.ndarray
    bone: np.ndarray
    brain: np.ndarray
    tumour: np.ndarray
    ring: np.ndarray


def convex_hull_mask(mask: np.ndarray) -> np.ndarray:
    """Pixels (H, W) bool whose centres lie in the convex hull of the ``True`` pixel
    centres (empty when they are fewer than 3 or collinear)."""
    from scipy.spatial import ConvexHull, QhullError

    pts = np.argwhere(mask).astype(np.float64)
    out = np.zeros(mask.shape, bool)
    if len(pts) < 3:
        return out
    try:
        eq = ConvexHull(pts).equations  # (facets, 3): normal . p + offset <= 0 inside
    except QhullError:
        return out
    (y0, x0), (y1, x1) = pts.min(0).astype(int), pts.max(0).astype(int) + 1
    yy, xx = np.mgrid[y0:y1, x0:x1]
    grid = np.stack([yy.ravel(), xx.ravel()], 1).astype(np.float64)
    inside = np.all(grid @ eq[:, :2].T + eq[:, 2] <= 1e-9, axis=1)
    out[y0:y1, x0:x1] = inside.reshape(yy.shape)
    return out


def intracranial_mask(bone: np.ndarray, head: np.ndarray) -> np.ndarray:
    """The cavity enclosed by the skull (H, W) bool, bone excluded: the bone mask closed by
    a disc of :data:`SKULL_CLOSE_PX` and hole-filled; the convex hull of the bone when that
    ring is open (see the module docstring)."""
    skull = _close(bone, SKULL_CLOSE_PX)
    cavity = ndimage.binary_fill_holes(skull) & ~skull
    if cavity.sum() < MIN_CAVITY_FRACTION * max(int(head.sum()), 1):
        cavity = convex_hull_mask(bone)
    return cavity & ~bone & head


def lesion_regions(ct_hu: np.ndarray, tumour: np.ndarray | None = None) -> Regions:
    """Regions of one slice from its ground-truth CT (H, W) in HU and tumour mask (H, W)
    (None: no tumour known, tumour and ring empty)."""
    ct = np.asarray(ct_hu, dtype=np.float32)
    if ct.ndim != 2:
        raise ValueError(f"expected an (H, W) CT slice, got shape {ct.shape}")
    head = head_mask_from_ct(ct)
    t = np.zeros(ct.shape, bool) if tumour is None else np.asarray(tumour).astype(bool)
    if t.shape != ct.shape:
        raise ValueError(f"tumour mask {t.shape} and CT {ct.shape} differ in shape")
    t = t & head
    bone = head & (ct > BONE_HU) & ~t
    cavity = _erode(intracranial_mask(bone, head), BRAIN_ERODE_PX)
    soft = (ct >= SOFT_TISSUE_HU[0]) & (ct <= SOFT_TISSUE_HU[1])
    near = _dilate(t, TUMOUR_MARGIN_PX)
    brain = cavity & soft & ~near
    ring = _dilate(t, TUMOUR_MARGIN_PX + RING_PX) & ~near & brain
    return Regions(head=head, bone=bone, brain=brain, tumour=t, ring=ring)


def highpass(
    image: np.ndarray, support: np.ndarray, sigma: float = HIGHPASS_SIGMA_PX
) -> np.ndarray:
    """High-pass residual (H, W) of ``image`` inside ``support``: ``x - G(x w) / G(w)``, a
    Gaussian of ``sigma`` px normalised over the support ``w`` (0 outside it)."""
    w = np.asarray(support, dtype=np.float64)
    x = np.asarray(image, dtype=np.float64)
    if not w.any():
        return np.zeros(x.shape)
    num = ndimage.gaussian_filter(x * w, sigma, mode="constant")
    den = ndimage.gaussian_filter(w, sigma, mode="constant")
    smooth = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-12)
    return np.where(w > 0, x - smooth, 0.0)


def dice_summary(
    pred: np.ndarray, masks: np.ndarray, patient_ids: Sequence[str] | None = None
) -> dict[str, Any]:
    """Dice of predicted masks (N, H, W) against ``masks`` (N, H, W): ``dice`` the mean
    per-patient Dice (slices pooled per patient; without ``patient_ids`` every slice is its
    own patient), ``slice_dice`` the mean per-slice Dice, both-empty cases excluded."""
    from mrict.segmentation.metrics import evaluate_masks

    pred, masks = np.asarray(pred), np.asarray(masks)
    ids = list(patient_ids) if patient_ids is not None else [f"{i:06d}" for i in range(len(pred))]
    s = evaluate_masks(pred, masks, ids, with_hd95=False)["summary"]
    return {
        "dice": _none(s["patient_dice"]),
        "slice_dice": _none(s["slice_dice"]),
        "n_patients": s["n_patients"],
        "n_slices": s["n_slices"],
        "n_tumour_slices": int(np.asarray(masks).reshape(len(masks), -1).any(1).sum()),
        "patients_both_empty": s["patients_both_empty"],
    }


def segmenter_dice_on_translated(
    segmenter: Segmenter | str,
    images_unit: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray],
    patient_ids: Sequence[str] | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Dice of a trained mrict U-Net (a :class:`Segmenter` or its run folder) on images
    (N, H, W) in [-1, 1] of its own modality (e.g. translated source slices) against
    ``masks`` (N, H, W) {0, 1} (the source masks): :func:`dice_summary` of
    :func:`mrict.segmentation.predict.predict_masks`."""
    from mrict.segmentation.predict import predict_masks

    images = np.asarray(images_unit, dtype=np.float32)
    m = np.asarray(masks).astype(np.uint8)
    if images.shape != m.shape or images.ndim != 3:
        raise ValueError(f"images {images.shape} and masks {m.shape} must both be (N, H, W)")
    if len(images) == 0:
        raise MrictError("no labelled slices to score the segmenter on")
    return dice_summary(predict_masks(segmenter, images, batch_size), m, patient_ids)


def _none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _pooled(images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> np.ndarray:
    parts = [np.asarray(x, np.float64)[m] for x, m in zip(images, masks, strict=True)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _median(v: np.ndarray) -> float | None:
    return float(np.median(v)) if v.size else None


def _mean(v: np.ndarray) -> float | None:
    return float(v.mean()) if v.size else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or abs(b) < 1e-12 else a / b


def brain_interior(brain: np.ndarray, depth: int = BRAIN_INTERIOR_PX) -> np.ndarray:
    """Pixels (H, W) bool of the brain region farther than ``depth`` pixels (Euclidean)
    from its edge: the region eroded by a disc of that radius. The rest, the rim, holds the
    brain next to the skull's inner table, where a translation's misplaced or blurred bone
    edge shows up in the high-pass residual as if it were texture."""
    return _erode(np.asarray(brain, bool), depth)


def _lesion_medians(
    images: Sequence[np.ndarray], regions: Sequence[Regions]
) -> tuple[float | None, float | None, float | None]:
    """Pooled medians of the tumour, the brain and the ring over the slices that hold
    tumour (None where a region is empty)."""
    slices = [i for i, r in enumerate(regions) if r.tumour.any()]
    sel = [images[i] for i in slices]
    return tuple(  # type: ignore[return-value]
        _median(_pooled(sel, [getattr(regions[i], name) for i in slices]))
        for name in ("tumour", "brain", "ring")
    )


def tumour_contrast_ratio(
    preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], regions: Sequence[Regions]
) -> float | None:
    """The translation's tumour-to-brain contrast over the ground truth's (the
    ``contrast_ratio`` of :func:`lesion_metrics`, without the rest): 1 = the real
    conspicuity, 0 = the tumour is invisible, negative = inverted. ``preds``/``truths``
    (H, W) slices in one unit (clip them first as :func:`lesion_metrics` does); None when
    no slice holds tumour or the real contrast is 0."""
    t_p, b_p, _ = _lesion_medians(preds, regions)
    t_g, b_g, _ = _lesion_medians(truths, regions)
    return _ratio(_diff(t_p, b_p), _diff(t_g, b_g))


def lesion_metrics(
    preds: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    regions: Sequence[Regions],
    modality: str,
) -> dict[str, Any]:
    """Region metrics of translated slices against ground truth, pooled over slices.

    ``preds``/``truths``: (H, W) slices, in HU for ``modality`` "CT" (MR -> CT), in [-1, 1]
    for "MR" (CT -> MR); ``regions`` from :func:`lesion_regions` of the GT CT. Keys (``_hu``
    for CT): ``mae_{tumour,brain,ring,bone}``, ``tumour_median_{pred,gt}``,
    ``brain_median_{pred,gt}``, ``tumour_to_brain_contrast_{pred,gt}``, ``contrast_ratio``,
    ``tumour_to_ring_contrast_{pred,gt}``, ``brain_highpass_sd_{pred,gt}`` (and its
    ``brain_interior_`` and ``brain_rim_`` parts, :func:`brain_interior`),
    ``bone_mean_{pred,gt}`` and pixel/slice counts (see the module docstring).
    """
    if not len(preds) == len(truths) == len(regions):
        raise ValueError(f"{len(preds)} predictions, {len(truths)} truths, {len(regions)} regions")
    if modality == "CT":
        lo, hi, mae_scale, u = HU_MIN, HU_MAX, 1.0, "_hu"
    elif modality == "MR":
        lo, hi, mae_scale, u = -1.0, 1.0, 0.5, ""
    else:
        raise ValueError(f"modality must be CT or MR, got {modality!r}")
    p = [np.clip(np.asarray(x, np.float64), lo, hi) for x in preds]
    t = [np.clip(np.asarray(x, np.float64), lo, hi) for x in truths]
    out: dict[str, Any] = {}
    for name in ("tumour", "brain", "ring", "bone"):
        masks = [getattr(r, name) for r in regions]
        err = _pooled([a - b for a, b in zip(p, t, strict=True)], masks)
        out[f"mae_{name}{u}"] = _mean(np.abs(err) * mae_scale)
    tumour_slices = [i for i, r in enumerate(regions) if r.tumour.any()]
    brain = [r.brain for r in regions]
    inner = [brain_interior(r.brain) for r in regions]
    rim = [b & ~i for b, i in zip(brain, inner, strict=True)]
    for side, imgs in (("pred", p), ("gt", t)):
        tum, brain_med, ring = _lesion_medians(imgs, regions)
        out[f"tumour_median{u}_{side}"] = tum
        out[f"brain_median{u}_{side}"] = brain_med
        out[f"tumour_to_brain_contrast{u}_{side}"] = _diff(tum, brain_med)
        out[f"tumour_to_ring_contrast{u}_{side}"] = _diff(tum, ring)
        hp = [highpass(x, r.brain) for x, r in zip(imgs, regions, strict=True)]
        for part, masks in (("", brain), ("interior_", inner), ("rim_", rim)):
            resid = _pooled(hp, masks)
            out[f"brain_{part}highpass_sd{u}_{side}"] = float(resid.std()) if resid.size else None
        out[f"bone_mean{u}_{side}"] = _mean(_pooled(imgs, [r.bone for r in regions]))
    out["contrast_ratio"] = _ratio(
        out[f"tumour_to_brain_contrast{u}_pred"], out[f"tumour_to_brain_contrast{u}_gt"]
    )
    out["n_slices"] = len(regions)
    out["n_tumour_slices"] = len(tumour_slices)
    for name in ("tumour", "brain", "ring", "bone"):
        out[f"n_{name}_px"] = int(sum(int(getattr(r, name).sum()) for r in regions))
    return out


# ---- display: one compact table for the CLI and the report ----

METHOD_NAMES = {"model": "model", "identity": "identity", "histogram": "histogram"}
SEGMENTER_METHOD_NAMES = {
    "model": "translated (model)",
    "identity": "untranslated (identity)",
    "histogram": "histogram-matched",
}


def _fmt(x: Any, digits: int) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def lesion_table(
    by_method: dict[str, dict[str, Any]], modality: str
) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the lesion metrics of one direction: a row per method (prediction
    values) and a final "ground truth" row; ``modality`` "CT" (HU) or "MR" (normalised)."""
    u, digits = ("_hu", 1) if modality == "CT" else ("", 3)
    header = [
        "method",
        "MAE tumour",
        "MAE brain",
        "MAE bone",
        "tumour median",
        "tumour-brain contrast",
        "contrast ratio",
        "brain high-pass SD",
        "interior",
        "rim",
        "bone mean",
    ]
    paired = (
        "tumour_median",
        "tumour_to_brain_contrast",
        "brain_highpass_sd",
        "brain_interior_highpass_sd",
        "brain_rim_highpass_sd",
        "bone_mean",
    )
    rows = []
    for method, row in by_method.items():
        rows.append(
            [
                METHOD_NAMES.get(method, method),
                *(_fmt(row.get(f"mae_{r}{u}"), digits) for r in ("tumour", "brain", "bone")),
                *(_fmt(row.get(f"{k}{u}_pred"), digits) for k in paired[:2]),
                _fmt(row.get("contrast_ratio"), 2),
                *(_fmt(row.get(f"{k}{u}_pred"), digits) for k in paired[2:]),
            ]
        )
    if by_method:
        gt = next(iter(by_method.values()))
        rows.append(
            [
                "ground truth",
                "",
                "",
                "",
                *(_fmt(gt.get(f"{k}{u}_gt"), digits) for k in paired[:2]),
                "1.00" if gt.get("contrast_ratio") is not None else "n/a",
                *(_fmt(gt.get(f"{k}{u}_gt"), digits) for k in paired[2:]),
            ]
        )
    return header, rows


def segmenter_table(entry: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of one direction's segmenter Dice: translated, identity, histogram."""
    header = ["source slices", "Dice (per patient)", "Dice (per slice)", "patients", "slices"]
    rows = [
        [
            name,
            _fmt(entry[m].get("dice"), 3),
            _fmt(entry[m].get("slice_dice"), 3),
            str(entry[m].get("n_patients", "")),
            str(entry[m].get("n_slices", "")),
        ]
        for m, name in SEGMENTER_METHOD_NAMES.items()
        if m in entry
    ]
    return header, rows
