"""Tumour-aware CycleGAN terms, built on the masks that labelled source slices already have.

- Segmentation consistency (after CyCADA's semantic consistency and Zhang et al.'s shape
  consistency): a target-modality segmenter is trained jointly on translated source slices
  with the source masks (and on real target slices with their masks when allowed); the
  generator is penalised by the same segmenter's Dice + BCE on its translations, so the
  tumour must stay visible and in place.
- Lesion appearance, measured once on the labelled target train slices and matched by the
  translations under their source masks, in one of two forms: ``mean`` (default), the L1
  distance of each slice's tumour mean and tumour-to-ring contrast from the real tumours'
  averages, which pulls every slice to the population average; ``distribution``, the 1-D
  Wasserstein-1 distance between the translated tumour pixels of a batch and the real
  target tumour pixels (and the same for the ring of tissue around the tumour), which
  leaves a population of bright, dark and necrotic tumours free to stay one.

All images are (B, 1, H, W) in [-1, 1]; masks (B, 1, H, W) float in {0, 1}; ``labelled``
(B,) bool marks the slices whose mask is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from mrict.segmentation.losses import DiceBCELoss

#: ring around the tumour: pixels within this many pixels of it (Chebyshev distance)
RING_WIDTH = 3
#: a slice's tumour counts for the lesion statistics from this many pixels on
MIN_TUMOUR_PIXELS = 4
#: quantiles kept of the real target tumour and ring intensities (the reference
#: distributions of the ``distribution`` lesion term)
REFERENCE_QUANTILES = 64


def build_segmenter(channels: tuple[int, ...]) -> nn.Module:
    """A small 2-D residual U-Net (MONAI, instance norm): (B, 1, H, W) -> (B, 1, H, W) logits.
    H and W must be divisible by 2 ** (len(channels) - 1)."""
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=tuple(int(c) for c in channels),
        strides=(2,) * (len(channels) - 1),
        num_res_units=1,
        norm="instance",
    )


class CycleSegmenters(nn.Module):
    """``seg_ct`` segments CT-domain images, ``seg_mr`` MR-domain images (real or translated)."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.seg_ct = build_segmenter(channels)
        self.seg_mr = build_segmenter(channels)

    def forward(self, mr: torch.Tensor, ct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.seg_mr(mr), self.seg_ct(ct)


_DICE_BCE = DiceBCELoss(1.0, 1.0)


def masked_seg_loss(
    logits: torch.Tensor, masks: torch.Tensor, labelled: torch.Tensor
) -> torch.Tensor:
    """Dice + BCE over the labelled slices only; an exact zero (still attached to
    ``logits``, so every parameter gets a gradient) when none is labelled."""
    logits = logits.float()
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    keep = labelled.nonzero()[:, 0]
    return _DICE_BCE(logits[keep], masks[keep])


def ring_mask(masks: torch.Tensor, width: int = RING_WIDTH) -> torch.Tensor:
    """Pixels within ``width`` pixels of the tumour but outside it, (B, 1, H, W) in {0, 1}."""
    grown = F.max_pool2d(masks, 2 * width + 1, stride=1, padding=width)
    return (grown - masks).clamp(0, 1)


def counted_slices(
    masks: torch.Tensor, labelled: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tumours' rings (B, 1, H, W) in {0, 1} and which slices count for the lesion
    terms (B,) bool: labelled, at least ``MIN_TUMOUR_PIXELS`` tumour pixels, a non-empty
    ring."""
    ring = ring_mask(masks)
    valid = labelled & (masks.sum((1, 2, 3)) >= MIN_TUMOUR_PIXELS) & (ring.sum((1, 2, 3)) > 0)
    return ring, valid


def lesion_stats(
    images: torch.Tensor, masks: torch.Tensor, labelled: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per slice: mean intensity inside the tumour, mean in its ring, and whether the slice
    counts (:func:`counted_slices`). Each (B,); the means are 0 where the slice does not
    count."""
    x = images.float()
    ring, valid = counted_slices(masks, labelled)
    mean_t = (x * masks).sum((1, 2, 3)) / masks.sum((1, 2, 3)).clamp_min(1)
    mean_r = (x * ring).sum((1, 2, 3)) / ring.sum((1, 2, 3)).clamp_min(1)
    return mean_t * valid, mean_r * valid, valid


@dataclass(frozen=True)
class LesionReference:
    """Real target tumours in [-1, 1] units: mean tumour intensity and tumour-minus-ring
    contrast (per-slice averages), and the quantile functions of the pooled tumour and ring
    pixels, ``tumour_q`` / ``ring_q`` (``REFERENCE_QUANTILES`` values at probabilities
    (k + 0.5) / K, ascending); ``slices`` is how many slices they were measured on."""

    tumour: float
    contrast: float
    slices: int
    tumour_q: tuple[float, ...] = ()
    ring_q: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "tumour": self.tumour,
            "contrast": self.contrast,
            "slices": self.slices,
            "tumour_quantiles": [round(v, 6) for v in self.tumour_q],
            "ring_quantiles": [round(v, 6) for v in self.ring_q],
        }


def _quantiles(values: list[torch.Tensor], k: int) -> tuple[float, ...]:
    """``k`` quantiles at (i + 0.5) / k of the pooled ``values`` (float64, ascending)."""
    pooled = torch.cat([v.double().flatten() for v in values])
    probs = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    return tuple(float(q) for q in torch.quantile(pooled, probs))


@torch.no_grad()
def lesion_reference(
    images: torch.Tensor, masks: torch.Tensor, labelled: torch.Tensor, batch: int = 256
) -> LesionReference | None:
    """The :class:`LesionReference` of a modality's labelled slices (N, 1, H, W), or None
    when none has a tumour big enough to measure."""
    sum_t = sum_c = 0.0
    count = 0
    tumour_px: list[torch.Tensor] = []
    ring_px: list[torch.Tensor] = []
    for i in range(0, len(images), batch):
        x = images[i : i + batch].float()
        m = masks[i : i + batch].float()
        t, r, v = lesion_stats(x, m, labelled[i : i + batch])
        sum_t += float(t[v].double().sum())
        sum_c += float((t - r)[v].double().sum())
        count += int(v.sum())
        keep = v.view(-1, 1, 1, 1)
        tumour_px.append(x[(m > 0) & keep])
        ring_px.append(x[(ring_mask(m) > 0) & keep])
    if count == 0:
        return None
    k = REFERENCE_QUANTILES
    return LesionReference(
        sum_t / count, sum_c / count, count, _quantiles(tumour_px, k), _quantiles(ring_px, k)
    )


def lesion_appearance_loss(
    fake: torch.Tensor, masks: torch.Tensor, labelled: torch.Tensor, ref: LesionReference
) -> torch.Tensor:
    """Mean over the counted slices of |tumour mean - ref.tumour| + |contrast -
    ref.contrast| of translated images ``fake`` under their source masks (exact zero,
    attached to ``fake``, when no slice counts)."""
    mean_t, mean_r, valid = lesion_stats(fake, masks, labelled)
    if not bool(valid.any()):
        return fake.float().sum() * 0.0
    err = (mean_t - ref.tumour).abs() + ((mean_t - mean_r) - ref.contrast).abs()
    return err[valid].mean()


def _reference_at(quantiles: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """The reference quantile function (values at (k + 0.5) / K) linearly interpolated at
    ``probs`` in (0, 1), constant beyond the outer quantiles."""
    k = quantiles.numel()
    pos = (probs * k - 0.5).clamp(0, k - 1)
    lo = pos.floor().long().clamp(max=k - 1)
    hi = (lo + 1).clamp(max=k - 1)
    frac = pos - lo.to(pos.dtype)
    return quantiles[lo] * (1 - frac) + quantiles[hi] * frac


def wasserstein_to_reference(values: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """1-D Wasserstein-1 distance between the empirical distribution of ``values`` (any
    shape, pooled) and the reference quantile function ``quantiles`` (K,): the mean
    absolute difference between the sorted values and the reference at their plotting
    positions (i + 0.5) / n. Differentiable in ``values``; same units as both."""
    v = values.flatten().float()
    ordered, _ = torch.sort(v)
    n = ordered.numel()
    probs = (torch.arange(n, device=v.device, dtype=torch.float32) + 0.5) / n
    return (ordered - _reference_at(quantiles.to(v.device, torch.float32), probs)).abs().mean()


def lesion_distribution_loss(
    fake: torch.Tensor, masks: torch.Tensor, labelled: torch.Tensor, ref: LesionReference
) -> torch.Tensor:
    """Wasserstein-1 distance of the translated tumour pixels of the counted slices of the
    batch (pooled) from the real target tumours' distribution, plus the same for the ring
    pixels; [-1, 1] units. Exact zero, attached to ``fake``, when no slice counts."""
    x = fake.float()
    around, valid = counted_slices(masks, labelled)
    if not bool(valid.any()) or not ref.tumour_q:
        return x.sum() * 0.0
    keep = valid.view(-1, 1, 1, 1)
    tumour = x[(masks > 0) & keep]
    ring = x[(around > 0) & keep]
    t_q = torch.tensor(ref.tumour_q)
    r_q = torch.tensor(ref.ring_q)
    return wasserstein_to_reference(tumour, t_q) + wasserstein_to_reference(ring, r_q)
