"""The banded-matmul filter behind SSIM and MIND equals the 2-D convolution it replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mrict.translation.losses import _gaussian_1d, separable_filter, ssim


@pytest.mark.parametrize("shape,k", [((2, 5, 23, 31), 11), ((1, 8, 9, 9), 5), ((3, 1, 4, 6), 3)])
def test_equals_conv2d_with_outer_product_kernel(shape: tuple[int, ...], k: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float32, requires_grad=True)
    taps = _gaussian_1d(k, 1.5)
    g = torch.tensor(taps)
    kernel = (g[:, None] * g[None, :]).expand(shape[1], 1, k, k)
    want = F.conv2d(x, kernel, groups=shape[1])
    got = separable_filter(x, taps)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(want)
    (gw,) = torch.autograd.grad(want, x, grad)
    (gg,) = torch.autograd.grad(got, x, grad)
    torch.testing.assert_close(gg, gw, rtol=1e-5, atol=1e-6)


def test_ssim_known_values() -> None:
    torch.manual_seed(1)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    # SSIM is symmetric and falls when noise is added
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    assert ssim(x, y).item() == pytest.approx(ssim(y, x).item(), abs=1e-6)
    assert ssim(x, y).item() < 0.9
