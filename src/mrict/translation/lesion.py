"""Tumour-aware CycleGAN terms, built on the masks that labelled source slices already have.

- Segmentation consistency (after CyCADA's semantic consistency and Zhang et al.'s shape
  consistency): a target-modality segmenter is trained jointly on translated source slices
  with the source masks (and on real target slices with their masks when allowed); the
  generator is penalised by the same segmenter's Dice + BCE on its translations, so the
  tumour must stay visible and in place.
- Lesion appearance: the translated tumour's mean intensity and its contrast to a ring of
  surrounding tissue should match those of real tumours of the target modality (reference
  values measured once on the labelled target train slices).

All images are (B, 1, H, W) in [-1, 1]; masks (B, 1, H, W) float in {0, 1}; ``labelled``
(B,) bool marks the slices whose mask is known.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from mrict.segmentation.losses import DiceBCELoss

#: ring around the tumour: pixels within this many pixels of it (Chebyshev distance)
RING_WIDTH = 3
#: a slice's tumour counts for the lesion statistics from this many pixels on
MIN_TUMOUR_PIXELS = 4


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


def lesion_stats(
    images: torch.Tensor, masks: torch.Tensor, labelled: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per slice: mean intensity inside the tumour, mean in its ring, and whether the slice
    counts (labelled, at least ``MIN_TUMOUR_PIXELS`` tumour pixels, a non-empty ring).
    Each (B,); the means are 0 where the slice does not count."""
    x = images.float()
    ring = ring_mask(masks)
    n_t = masks.sum((1, 2, 3))
    n_r = ring.sum((1, 2, 3))
    valid = labelled & (n_t >= MIN_TUMOUR_PIXELS) & (n_r > 0)
    mean_t = (x * masks).sum((1, 2, 3)) / n_t.clamp_min(1)
    mean_r = (x * ring).sum((1, 2, 3)) / n_r.clamp_min(1)
    return mean_t * valid, mean_r * valid, valid


@dataclass(frozen=True)
class LesionReference:
    """Mean tumour intensity and tumour-minus-ring contrast of real target tumours, in
    [-1, 1] units; ``slices`` is how many slices they were measured on."""

    tumour: float
    contrast: float
    slices: int

    def as_dict(self) -> dict[str, float]:
        return {"tumour": self.tumour, "contrast": self.contrast, "slices": self.slices}


@torch.no_grad()
def lesion_reference(
    images: torch.Tensor, masks: torch.Tensor, labelled: torch.Tensor, batch: int = 256
) -> LesionReference | None:
    """The :class:`LesionReference` of a modality's labelled slices (N, 1, H, W), or None
    when none has a tumour big enough to measure."""
    sum_t = sum_c = 0.0
    count = 0
    for i in range(0, len(images), batch):
        t, r, v = lesion_stats(images[i : i + batch], masks[i : i + batch], labelled[i : i + batch])
        sum_t += float(t[v].double().sum())
        sum_c += float((t - r)[v].double().sum())
        count += int(v.sum())
    if count == 0:
        return None
    return LesionReference(sum_t / count, sum_c / count, count)


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
