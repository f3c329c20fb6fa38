"""The CPU head convolution equals nn.Conv2d in values, gradients and state dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mrict.translation.head_conv import HeadConv2d, single_output_conv2d
from mrict.translation.networks import ResnetGenerator, init_weights


@pytest.mark.parametrize("channels,k,size", [(5, 7, 19), (3, 3, 8), (1, 1, 6)])
def test_matches_conv2d_values_and_gradients(channels: int, k: int, size: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, 1, k)
    head = HeadConv2d(channels, k)
    head.load_state_dict(conv.state_dict())
    x = torch.randn(2, channels, size, size + 3, dtype=torch.float64)
    conv.double()
    head.double()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = conv(xa), head(xb)
    assert ya.shape == yb.shape == (2, 1, size - k + 1, size + 3 - k + 1)
    # single-output convolution is accumulated in fp32 by design
    torch.testing.assert_close(yb.double(), ya, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g.to(yb.dtype))
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(head.weight.grad, conv.weight.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(head.bias.grad, conv.bias.grad, rtol=1e-6, atol=1e-6)


def test_bf16_autocast_close_to_fp32() -> None:
    torch.manual_seed(1)
    head = HeadConv2d(8, 7)
    x = torch.randn(2, 8, 30, 30)
    exact = nn.functional.conv2d(x, head.weight, head.bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = head(x)
    assert y.dtype == torch.float32  # summed in fp32
    assert (y - exact).abs().max() < 0.02 * exact.abs().max()


def test_rejects_wrong_map_count() -> None:
    with pytest.raises(ValueError):
        single_output_conv2d(torch.randn(1, 2, 9, 9), torch.randn(2, 2, 3, 3), None)


def test_generator_state_dict_and_output_unchanged() -> None:
    torch.manual_seed(2)
    fast = init_weights(ResnetGenerator(1, 1, 4, 1))
    plain = ResnetGenerator(1, 1, 4, 1, fast_layers=False)
    assert list(fast.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(fast.state_dict())
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
    assert isinstance(fast.model[-2], HeadConv2d)
    assert type(plain.model[-2]) is nn.Conv2d


def test_reflection_pad_keeps_bf16_under_autocast() -> None:
    from mrict.translation.networks import ReflectionPad2d

    x = torch.randn(2, 3, 5, 6).bfloat16()
    pad = ReflectionPad2d(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = pad(x)
    assert y.dtype == torch.bfloat16  # plain autocast would return fp32 here
    torch.testing.assert_close(y, nn.ReflectionPad2d(2)(x.float()).bfloat16(), rtol=0, atol=0)
    z = torch.randn(1, 1, 4, 4)
    torch.testing.assert_close(pad(z), nn.functional.pad(z, (2, 2, 2, 2), mode="reflect"))
