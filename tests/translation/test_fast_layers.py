"""The generator's faster CPU layers equal their torch.nn counterparts in values, gradients
and state dict: the one-channel stem convolution, reflection padding (its hand-written
backward) and instance norm computed as group norm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mrict.translation.instance_norm import InstanceNorm2d
from mrict.translation.networks import PatchDiscriminator, ResnetGenerator, init_weights
from mrict.translation.reflect_pad import ReflectionPad2d, reflect_pad2d
from mrict.translation.stem_conv import StemConv2d


@pytest.mark.parametrize("out_ch,k,h,w", [(5, 7, 13, 11), (3, 3, 4, 4), (2, 1, 5, 6)])
def test_stem_conv_matches_conv2d(out_ch: int, k: int, h: int, w: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, out_ch, k).double()
    stem = StemConv2d(out_ch, k).double()
    stem.load_state_dict(conv.state_dict())
    assert list(stem.state_dict()) == list(conv.state_dict())
    x = torch.randn(3, 1, h, w, dtype=torch.float64, requires_grad=True)
    ya, yb = conv(x), stem(x)
    assert yb.shape == ya.shape == (3, out_ch, h - k + 1, w - k + 1)
    torch.testing.assert_close(yb, ya, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ya)
    ga = torch.autograd.grad(ya, (x, conv.weight, conv.bias), g)
    gb = torch.autograd.grad(yb, (x, stem.weight, stem.bias), g)
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_stem_conv_skips_the_input_gradient_it_does_not_need() -> None:
    stem = StemConv2d(4, 3)
    x = torch.randn(2, 1, 8, 8)  # a real image: no gradient wanted
    stem(x).sum().backward()
    assert x.grad is None and stem.weight.grad is not None and stem.bias.grad is not None


def test_stem_conv_bf16_autocast_close_to_fp32() -> None:
    torch.manual_seed(1)
    stem = StemConv2d(8, 7)
    x = torch.rand(2, 1, 30, 30, requires_grad=True) * 2 - 1
    exact = F.conv2d(x, stem.weight, stem.bias)
    gx_exact, gw_exact = torch.autograd.grad(exact.square().sum(), (x, stem.weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = stem(x)
    assert y.dtype == torch.bfloat16  # as autocast's own conv2d
    assert (y.float() - exact).abs().max() < 0.02 * exact.abs().max()
    gx, gw = torch.autograd.grad(y.float().square().sum(), (x, stem.weight))
    assert gx.dtype == gw.dtype == torch.float32
    assert (gx - gx_exact).abs().max() < 0.03 * gx_exact.abs().max()
    assert (gw - gw_exact).abs().max() < 0.03 * gw_exact.abs().max()


@pytest.mark.parametrize("pad", [(1, 1, 1, 1), (3, 3, 3, 3), (2, 1, 0, 3)])
def test_reflect_pad_backward_matches_torch(pad: tuple[int, int, int, int]) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    ya = F.pad(x, pad, mode="reflect")
    yb = reflect_pad2d(x, pad)
    torch.testing.assert_close(yb, ya, rtol=0, atol=0)
    g = torch.randn_like(ya)
    (ga,) = torch.autograd.grad(ya, x, g)
    (gb,) = torch.autograd.grad(yb, x, g)
    torch.testing.assert_close(gb, ga, rtol=1e-12, atol=1e-12)


def test_reflect_pad_module_rejects_too_large_padding_like_torch() -> None:
    x = torch.randn(1, 1, 3, 3, requires_grad=True)
    with pytest.raises(RuntimeError):
        nn.ReflectionPad2d(3)(x)
    with pytest.raises(RuntimeError):
        ReflectionPad2d(3)(x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_instance_norm_as_group_norm_matches_instance_norm(dtype: torch.dtype) -> None:
    torch.manual_seed(3)
    x = (torch.randn(3, 5, 9, 8, dtype=torch.float64) * 4 + 2).to(dtype)
    g = torch.randn(3, 5, 9, 8, dtype=torch.float64)
    xd = x.double().requires_grad_()
    exact_y = F.instance_norm(xd)
    (exact_g,) = torch.autograd.grad(exact_y, xd, g)
    norm = InstanceNorm2d(5)
    assert norm.state_dict() == {} == nn.InstanceNorm2d(5).state_dict()
    xb = x.clone().requires_grad_()
    y = norm(xb)
    (gx,) = torch.autograd.grad(y, xb, g.to(dtype))
    tol = 1e-10 if dtype == torch.float64 else 0.02
    torch.testing.assert_close(y.double(), exact_y.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(gx.double(), exact_g, rtol=tol, atol=tol)


def test_fast_and_plain_networks_agree() -> None:
    """Same state-dict keys; the fast generator and discriminator give the plain ones'
    outputs and parameter gradients in fp64."""
    torch.manual_seed(4)
    fast = init_weights(ResnetGenerator(1, 1, 4, 2)).double()
    plain = ResnetGenerator(1, 1, 4, 2, fast_layers=False).double()
    assert list(fast.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(fast.state_dict())
    assert isinstance(fast.model[1], StemConv2d) and type(plain.model[1]) is nn.Conv2d
    d_fast = init_weights(PatchDiscriminator(1, 4)).double()
    d_plain = PatchDiscriminator(1, 4, fast_layers=False).double()
    d_plain.load_state_dict(d_fast.state_dict())
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64) * 2 - 1
    losses = []
    for g, d in ((fast, d_fast), (plain, d_plain)):
        y = g(x)
        loss = d(y).square().mean() + (g(y) - x).abs().mean()
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-10, atol=1e-12)
    for (name, a), b in zip(fast.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-10, msg=name)
    for a, b in zip(d_fast.parameters(), d_plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-10)


def test_plain_layers_while_compiling_or_exporting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Graph capture (torch.compile, export, tracing) sees the plain torch.nn operators."""
    x = torch.randn(2, 1, 12, 12, requires_grad=True)
    h = torch.randn(2, 3, 12, 12, requires_grad=True)
    fast = {
        "stem": type(StemConv2d(3, 3)(x).grad_fn).__name__,
        "pad": type(ReflectionPad2d(1)(h).grad_fn).__name__,
        "norm": type(InstanceNorm2d(3)(h).grad_fn).__name__,
    }
    assert "ConvolutionBackward" not in fast["stem"]
    assert "ReflectionPad2DBackward" not in fast["pad"]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert "ConvolutionBackward" in type(StemConv2d(3, 3)(x).grad_fn).__name__
    assert "ReflectionPad2DBackward" in type(ReflectionPad2d(1)(h).grad_fn).__name__
    assert type(InstanceNorm2d(3)(h).grad_fn).__name__ != fast["norm"]
