"""SSIM in translation metrics: the same values as scikit-image's Gaussian SSIM, borders included."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mrict.translation.metrics import cycle_metrics, ssim_map, ssim_mean, unit_metrics


def _pair(h: int = 48, w: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(12)
    yy, xx = np.mgrid[:h, :w]
    a = 0.5 + 0.3 * np.sin(xx / 4.0) * np.cos(yy / 6.0) + 0.05 * rng.standard_normal((h, w))
    a = np.clip(a, 0, 1)
    b = np.clip(a + 0.1 * rng.standard_normal((h, w)), 0, 1)
    return a, b


def _reference_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Gaussian SSIM written out with scipy: sigma 1.5 truncated at 3.5 sigma (window 11),
    half-sample symmetric borders ('reflect' in scipy), population covariance."""

    def blur(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x, sigma=1.5, truncate=3.5, mode="reflect")

    c1, c2 = 0.01**2, 0.03**2
    ma, mb = blur(a), blur(b)
    va, vb, cab = blur(a * a) - ma**2, blur(b * b) - mb**2, blur(a * b) - ma * mb
    return ((2 * ma * mb + c1) * (2 * cab + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))


def test_map_matches_reference_everywhere_including_borders() -> None:
    a, b = _pair()
    got = ssim_map(a, b)
    assert got.shape == a.shape
    np.testing.assert_allclose(got, _reference_map(a, b), atol=1e-10, rtol=0)


def test_values_frozen_from_scikit_image() -> None:
    # scikit-image 0.26 structural_similarity(a, b, data_range=1, gaussian_weights=True,
    # sigma=1.5, use_sample_covariance=False, full=True) on _pair().
    a, b = _pair()
    smap = ssim_map(a, b)
    assert smap[0, 0] == pytest.approx(0.2810851326399315, abs=1e-10)
    assert smap[20, 17] == pytest.approx(0.5329109301034327, abs=1e-10)
    assert smap[47, 39] == pytest.approx(0.4722396443741934, abs=1e-10)
    assert smap.mean() == pytest.approx(0.573002794481684, abs=1e-10)
    assert ssim_mean(a, b) == pytest.approx(0.5735692420981234, abs=1e-10)


def test_identical_images_score_one() -> None:
    a, _ = _pair()
    np.testing.assert_allclose(ssim_map(a, a), 1.0, atol=1e-12)
    assert cycle_metrics(a * 2 - 1, a * 2 - 1)["cycle_ssim"] == pytest.approx(1.0)


def test_masked_ssim_is_the_mean_of_the_map_inside_the_mask() -> None:
    a, b = _pair()
    mask = np.zeros(a.shape, dtype=bool)
    mask[:10, :] = True  # touches the border, where the window extends past the image
    out = unit_metrics(b * 2 - 1, a * 2 - 1, mask)
    ref = _reference_map(np.where(mask, a, 0.0), np.where(mask, b, 0.0))
    assert out["ssim"] == pytest.approx(float(ref[mask].mean()), abs=1e-10)
