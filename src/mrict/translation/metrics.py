"""Translation metrics.

Paired (fidelity, against ground truth), the SynthRAD protocol for MR -> CT: MAE in HU
inside the head mask; PSNR and SSIM on HU clipped to [-1024, 3000] and mapped to [0, 1]
(data range 1), with everything outside the head mask set to -1024 HU in both images, PSNR
over the mask and SSIM (Gaussian window 11, sigma 1.5) averaged over the mask. For CT -> MR
the same on the normalised intensities ([-1, 1] -> [0, 1]).

Unpaired (no ground truth; these measure consistency and structure, NOT fidelity): cycle
SSIM/PSNR between an image and its reconstruction, MIND similarity and edge correlation
between an image and its translation.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torchmetrics.functional.image import structural_similarity_index_measure

from mrict.data.intensity import HU_MAX, HU_MIN, hu_to_01, unit_to_01

HU_WINDOW = f"[{HU_MIN:.0f}, {HU_MAX:.0f}] HU"

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_SSIM_PAD = SSIM_WINDOW // 2


def head_mask_from_ct(ct_hu: np.ndarray, threshold: float = -500.0) -> np.ndarray:
    """Head mask (H, W) bool: HU > ``threshold``, holes filled, largest component kept."""
    mask = ndimage.binary_fill_holes(ct_hu > threshold)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return mask.astype(bool)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Full-size SSIM map (H, W) of two images in [0, 1], in float64: Gaussian window 11,
    sigma 1.5, population covariance, data range 1, K1 0.01, K2 0.03; borders by
    half-sample symmetric extension. Equals scikit-image's ``structural_similarity(a, b,
    data_range=1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    full=True)`` map (tests/translation/test_ssim.py)."""
    # torchmetrics pads with whole-sample reflection; padding symmetrically first and
    # cropping its padded margin back off makes every window see the symmetric extension.
    pad = _SSIM_PAD
    ta, tb = (
        torch.from_numpy(np.pad(np.asarray(x, dtype=np.float64), pad, mode="symmetric"))[None, None]
        for x in (a, b)
    )
    _, full = structural_similarity_index_measure(
        ta,
        tb,
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_WINDOW,
        data_range=1.0,
        return_full_image=True,
    )
    return full[0, 0, pad:-pad, pad:-pad].numpy()


def ssim_mean(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two images in [0, 1], over the map less a half-window margin (as
    scikit-image's scalar)."""
    smap = ssim_map(a, b)
    inner = smap[_SSIM_PAD:-_SSIM_PAD, _SSIM_PAD:-_SSIM_PAD]
    return float(inner.mean() if inner.size else smap.mean())


def _masked_01(pred01: np.ndarray, true01: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    pred = np.where(mask, pred01, 0.0)
    true = np.where(mask, true01, 0.0)
    mse = float(np.mean((pred[mask] - true[mask]) ** 2)) if mask.any() else 0.0
    psnr = float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))
    smap = ssim_map(true, pred)
    ssim = float(smap[mask].mean()) if mask.any() else float(smap.mean())
    return {"psnr": psnr, "ssim": ssim}


def ct_metrics(pred_hu: np.ndarray, true_hu: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """MR -> CT fidelity of one slice (H, W): ``mae_hu``, ``psnr``, ``ssim`` (see module doc)."""
    pred = np.clip(pred_hu, HU_MIN, HU_MAX)
    true = np.clip(true_hu, HU_MIN, HU_MAX)
    mask = mask.astype(bool)
    mae = float(np.abs(pred - true)[mask].mean()) if mask.any() else 0.0
    out = {"mae_hu": mae}
    out.update(_masked_01(hu_to_01(pred), hu_to_01(true), mask))
    return out


def unit_metrics(pred: np.ndarray, true: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """CT -> MR fidelity of one slice (H, W) on normalised intensities in [-1, 1]:
    ``mae`` (in [0, 1] units), ``psnr``, ``ssim`` over the mask."""
    p01, t01 = unit_to_01(np.clip(pred, -1, 1)), unit_to_01(np.clip(true, -1, 1))
    mask = mask.astype(bool)
    out = {"mae": float(np.abs(p01 - t01)[mask].mean()) if mask.any() else 0.0}
    out.update(_masked_01(p01, t01, mask))
    return out


# ---- unpaired: consistency and structure, not fidelity ----


def cycle_metrics(image: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
    """Cycle consistency of one (H, W) image in [-1, 1]: ``cycle_psnr``, ``cycle_ssim``."""
    a, b = unit_to_01(image), unit_to_01(reconstruction)
    mse = float(np.mean((a - b) ** 2))
    ssim = ssim_mean(a, b)
    return {
        "cycle_psnr": float("inf") if mse == 0 else float(10 * np.log10(1 / mse)),
        "cycle_ssim": float(ssim),
    }


def edge_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the Sobel gradient magnitudes of two (H, W) images (1 = the
    same edges, independent of contrast polarity and scale)."""
    ga = np.hypot(ndimage.sobel(a, 0), ndimage.sobel(a, 1)).ravel()
    gb = np.hypot(ndimage.sobel(b, 0), ndimage.sobel(b, 1)).ravel()
    if ga.std() < 1e-12 or gb.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(ga, gb)[0, 1])


def mind_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """1 - mean |MIND(a) - MIND(b)| for two (H, W) images (1 = identical local structure)."""
    from mrict.translation.losses import mind

    ta = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    tb = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))[None, None]
    with torch.no_grad():
        return float(1.0 - (mind(ta) - mind(tb)).abs().mean())


def structure_metrics(image: np.ndarray, translated: np.ndarray) -> dict[str, float]:
    """Structure preservation between an image and its translation (not fidelity)."""
    return {
        "mind_similarity": mind_similarity(image, translated),
        "edge_correlation": edge_correlation(image, translated),
    }


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-key mean over slices (finite values only) plus ``n``."""
    out: dict[str, float] = {}
    for key in rows[0] if rows else []:
        vals = np.array([r[key] for r in rows], dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        out[key] = float(finite.mean()) if finite.size else float("inf")
    out["n"] = len(rows)
    return out
