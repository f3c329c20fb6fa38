"""A faster CPU implementation of the generator's first layer: a k x k convolution of a
one-channel image (the 7x7 stem).

oneDNN computes the gradients of a convolution with a single input channel far below the
machine's matrix-multiply peak (about 4 ms each for the weight and the input gradient of a
1 -> 24 channel 7x7 convolution on a (4, 1, 102, 102) bf16 batch, against under 1 ms for the
forward pass). With the k*k shifted windows of the image as the columns of a matrix
``cols`` (B, k*k, H*W),

    y = W cols,   dL/dW = sum_b dL/dy cols^T,   z = W^T dL/dy,

and the input gradient is each of the k*k rows of ``z`` added back at its window's offset.
All three are batched matrix products plus cheap slices. Same parameters and state dict as
``nn.Conv2d``, same values up to floating-point rounding. On other devices, and while
tracing, exporting or compiling, the layer is an ordinary convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from mrict.translation.fast_path import use_fast_path


def _windows(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, 1, Hp, Wp) -> (B, k*k, H*W) with row (p, q) the window x[p : p + H, q : q + W]."""
    b, _, hp, wp = x.shape
    h, w = hp - k + 1, wp - k + 1
    return x[:, 0].unfold(1, k, 1).unfold(2, k, 1).permute(0, 3, 4, 1, 2).reshape(b, k * k, h * w)


class _StemConv(torch.autograd.Function):
    """Valid, stride-1 convolution of (B, 1, Hp, Wp) ``x`` with an (O, 1, k, k) weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):  # type: ignore[override]
        o, _, k, _ = weight.shape
        b, _, hp, wp = x.shape
        cols = _windows(x, k)
        y = torch.bmm(weight.view(1, o, k * k).expand(b, o, k * k), cols)
        if bias is not None:
            y += bias.view(1, o, 1)
        ctx.save_for_backward(cols, weight)
        ctx.shape = (hp, wp)
        ctx.has_bias = bias is not None
        return y.view(b, o, hp - k + 1, wp - k + 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        cols, weight = ctx.saved_tensors
        o, _, k, _ = weight.shape
        hp, wp = ctx.shape
        b, _, h, w = grad.shape
        need_x, need_w, need_b = ctx.needs_input_grad
        acc = torch.promote_types(weight.dtype, torch.float32)
        g = grad.to(weight.dtype).reshape(b, o, h * w)
        gx = gw = gb = None
        if need_w:
            gw = torch.bmm(g, cols.transpose(1, 2)).sum(0, dtype=acc)
            gw = gw.view(o, 1, k, k).to(weight.dtype)
        if need_b and ctx.has_bias:
            gb = grad.sum((0, 2, 3), dtype=acc).to(weight.dtype)
        if need_x:
            wt = weight.view(o, k * k).t().contiguous()
            z = torch.bmm(wt.expand(b, k * k, o), g).to(acc).view(b, k * k, h, w)
            out = z.new_zeros((b, hp, wp))
            for p in range(k):
                for q in range(k):
                    out[:, p : p + h, q : q + w] += z[:, p * k + q]
            gx = out.unsqueeze(1).to(cols.dtype)
        return gx, gw, gb


class StemConv2d(nn.Conv2d):
    """``nn.Conv2d(1, out_channels, k)`` (stride 1, no padding) whose CPU forward and
    backward are batched matrix products (bf16 under autocast). Parameters and state-dict
    keys are those of ``nn.Conv2d``."""

    def __init__(self, out_channels: int, kernel_size: int) -> None:
        super().__init__(1, out_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not use_fast_path(x) or x.shape[1] != 1:
            return F.conv2d(x, self.weight, self.bias)
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            with torch.autocast("cpu", enabled=False):
                return _StemConv.apply(x.to(dtype), self.weight.to(dtype), self.bias.to(dtype))
        return _StemConv.apply(x, self.weight, self.bias)
