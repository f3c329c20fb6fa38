"""The MR -> CT soft-tissue texture term: its region, its statistic, the loss and its
gradient, and its place in training."""

from __future__ import annotations

import math

import pytest
import torch

from mrict.data.intensity import hu_to_unit
from mrict.translation.texture import (
    MIN_PIXELS,
    highpass_sd,
    soft_tissue_region,
    texture_loss,
)

MAP = "soft_tissue"


def _head(noise_hu: float, seed: int = 0, size: int = 48) -> torch.Tensor:
    """(2, 1, size, size) CT in the network map: air, a bone ring, 35 HU brain with
    Gaussian grain of SD ``noise_hu``."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2).sqrt()
    hu = torch.full((2, 1, size, size), -1000.0)
    hu[..., r < 0.45 * size] = 1000.0
    brain = r < 0.38 * size
    hu[..., brain] = 35.0 + noise_hu * torch.randn((2, 1, int(brain.sum())), generator=g)
    return hu_to_unit(hu, MAP)


def test_region_is_soft_tissue_without_its_edges():
    ct = _head(0.0)
    plain = soft_tissue_region(ct, MAP, erode=0)
    eroded = soft_tissue_region(ct, MAP)
    centre, bone, air = (0, 0, 24, 24), (0, 0, 24, 3), (0, 0, 0, 0)
    assert plain[centre] == 1 and plain[bone] == 0 and plain[air] == 0
    # the outermost ring of brain pixels (next to bone) is dropped by the erosion
    assert eroded.sum() < plain.sum() and (eroded <= plain).all()
    edge = plain.bool() & ~eroded.bool()
    assert edge.any() and not eroded[edge].any()


def test_highpass_sd_is_zero_for_flat_tissue_and_follows_the_grain():
    region = soft_tissue_region(_head(0.0), MAP)
    assert highpass_sd(_head(0.0), region) < 1e-5
    hu_per_unit = 300.0  # the soft-tissue map: -100..200 HU -> -0.7..0.3
    sd4 = float(highpass_sd(_head(4.0), region)) * hu_per_unit
    sd8 = float(highpass_sd(_head(8.0), region)) * hu_per_unit
    # white grain loses a little to the 1.5 px smoothing, never more than half
    assert 2.0 < sd4 < 4.4
    assert sd8 / sd4 == pytest.approx(2.0, rel=0.05)


def test_loss_compares_the_two_batches_and_its_gradient_smooths_the_fake():
    real = _head(3.0, seed=1)
    assert float(texture_loss(_head(3.0, seed=2), real, MAP)) < 0.05
    fake = _head(9.0, seed=2).requires_grad_(True)
    loss = texture_loss(fake, real, MAP)
    assert float(loss) == pytest.approx(2.0, abs=0.2)  # three times as grainy
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    with torch.no_grad():
        stepped = fake - 0.5 * fake.grad / fake.grad.abs().max() * 0.01
    assert float(texture_loss(stepped, real, MAP)) < float(loss)
    # a too-smooth translation is penalised as well
    assert float(texture_loss(_head(0.5, seed=2), real, MAP)) > 0.5


def test_loss_is_an_attached_zero_without_soft_tissue():
    air = torch.full((2, 1, 16, 16), -1.0, requires_grad=True)
    assert soft_tissue_region(air, MAP).sum() < MIN_PIXELS
    loss = texture_loss(air, _head(3.0), MAP)
    assert float(loss) == 0.0 and loss.requires_grad
    loss.backward()
    assert air.grad is not None and math.isfinite(float(air.grad.sum()))
