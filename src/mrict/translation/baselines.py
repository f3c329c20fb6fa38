"""Trivial translation baselines every model must beat: identity and histogram matching."""

from __future__ import annotations

import numpy as np


def identity_baseline(images: np.ndarray) -> np.ndarray:
    """Output = input, (N, H, W) in [-1, 1] (the MRI read as if it were a CT, and vice versa)."""
    return np.asarray(images, dtype=np.float32).copy()


def match_quantiles(image: np.ndarray, reference_quantiles: np.ndarray) -> np.ndarray:
    """Histogram matching of one image to a target distribution given by its quantiles.

    Each pixel's empirical CDF value in ``image`` is mapped through the reference quantile
    function (ties share one value), which is what ``skimage.exposure.match_histograms``
    does against a reference image with that histogram.
    """
    ref = np.asarray(reference_quantiles, dtype=np.float64)
    values, inverse, counts = np.unique(image.ravel(), return_inverse=True, return_counts=True)
    cdf = (np.cumsum(counts) - 0.5 * counts) / image.size
    grid = np.linspace(0.0, 1.0, ref.size)
    mapped = np.interp(cdf, grid, ref)
    return mapped[inverse].reshape(image.shape).astype(np.float32)


def histogram_baseline(images: np.ndarray, target_quantiles: np.ndarray) -> np.ndarray:
    """Match every (H, W) slice of ``images`` (N, H, W) in [-1, 1] to the target domain's
    train-set intensity distribution (its quantiles in [-1, 1])."""
    return np.stack([match_quantiles(im, target_quantiles) for im in images]).astype(np.float32)
