"""Soft-tissue texture term for MR -> CT: the translated CT's fine-scale variation in soft
tissue matched to that of real CT.

The adversarial term alone lets the MR -> CT generator invent grain in the brain (its
high-pass standard deviation ends about twice the real one's), which no other term sees:
cycle and feature losses are satisfied by any invertible texture. This term measures, on
each batch, the pooled standard deviation of the high-pass residual ``x - G(x w) / G(w)``
(a Gaussian ``G`` of sigma :data:`HIGHPASS_SIGMA_PX` pixels, normalised over the region
``w`` so that bone and air do not leak in; the same statistic as the brain high-pass SD of
:mod:`mrict.translation.lesion_metrics`) over the soft tissue of the translated CT, and
over the soft tissue of the batch's real CT slices, and penalises their relative
difference ``|sd_fake - sd_real| / sd_real``. Soft tissue is the CT network range of
:data:`SOFT_TISSUE_HU` eroded by :data:`ERODE_PX` pixels (no partial-volume edges). Images
are (B, 1, H, W) in the CT network map ``ct_map``; the term needs no masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mrict.data.intensity import hu_to_unit
from mrict.translation.losses import _gaussian_1d

#: Gaussian of the high-pass residual, in pixels (as the brain texture metric)
HIGHPASS_SIGMA_PX = 1.5
#: soft tissue (brain, tumour, CSF, scalp muscle), HU
SOFT_TISSUE_HU = (-100.0, 200.0)
#: erosion of the soft-tissue region, pixels (drops edges against bone and air)
ERODE_PX = 2
#: a batch counts from this many soft-tissue pixels on
MIN_PIXELS = 64


def soft_tissue_region(ct: torch.Tensor, ct_map: str, erode: int = ERODE_PX) -> torch.Tensor:
    """(B, 1, H, W) float {0, 1}: pixels of ``ct`` (network map ``ct_map``) in the
    soft-tissue range, eroded by ``erode`` pixels (square structuring element)."""
    lo, hi = (float(hu_to_unit(torch.tensor(v), ct_map)) for v in SOFT_TISSUE_HU)
    x = ct.detach().float()
    region = ((x >= lo) & (x <= hi)).float()
    if erode > 0:
        k = 2 * erode + 1
        region = 1.0 - F.max_pool2d(1.0 - region, k, stride=1, padding=erode)
    return region


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian of (B, 1, H, W), zero padding (same size)."""
    radius = max(1, int(round(3 * sigma)))
    taps = torch.tensor(_gaussian_1d(2 * radius + 1, sigma), dtype=x.dtype, device=x.device)
    x = F.conv2d(x, taps.view(1, 1, 1, -1), padding=(0, radius))
    return F.conv2d(x, taps.view(1, 1, -1, 1), padding=(radius, 0))


def highpass_sd(
    x: torch.Tensor, region: torch.Tensor, sigma: float = HIGHPASS_SIGMA_PX
) -> torch.Tensor:
    """Pooled SD (scalar, units of ``x``) of the high-pass residual of ``x`` (B, 1, H, W)
    over ``region`` (B, 1, H, W) {0, 1}; differentiable in ``x``."""
    x = x.float()
    smooth = _blur(x * region, sigma) / _blur(region, sigma).clamp_min(1e-6)
    resid = (x - smooth) * region
    n = region.sum().clamp_min(1.0)
    mean = resid.sum() / n
    return ((resid**2).sum() / n - mean**2).clamp_min(1e-12).sqrt()


def texture_loss(fake_ct: torch.Tensor, real_ct: torch.Tensor, ct_map: str) -> torch.Tensor:
    """``|sd_fake - sd_real| / sd_real`` of the soft-tissue high-pass SDs of translated CT
    ``fake_ct`` and real CT ``real_ct`` (both (B, 1, H, W) in the map ``ct_map``); the real
    side is a constant. Exact zero, attached to ``fake_ct``, when either batch has fewer
    than :data:`MIN_PIXELS` soft-tissue pixels."""
    region_f = soft_tissue_region(fake_ct, ct_map)
    region_r = soft_tissue_region(real_ct, ct_map)
    with torch.no_grad():
        sd_real = highpass_sd(real_ct, region_r)
    loss = (highpass_sd(fake_ct, region_f) - sd_real).abs() / sd_real.clamp_min(1e-6)
    # decided on the device (no synchronisation): too little soft tissue gives zero
    counts = (region_f.sum() >= MIN_PIXELS) & (region_r.sum() >= MIN_PIXELS)
    return torch.where(counts, loss, fake_ct.float().sum() * 0.0)
