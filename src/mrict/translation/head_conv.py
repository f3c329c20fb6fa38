"""A faster CPU implementation of the generator's last layer: a k x k convolution with one
output channel.

oneDNN runs a convolution with a single output channel at a few percent of the machine's
matrix-multiply peak (measured on AVX-512 CPUs: about 15 ms for a 24 -> 1 channel 7x7
convolution on a (4, 24, 102, 102) bf16 batch, forward and backward). The same result is

    y[i, j] = sum_{c, p, q} w[c, p, q] x[c, i + p, j + q]
            = sum_{p, q} z[(p, q), i + p, j + q],   z = W' x  (W' of shape (k*k, C))

one matrix multiplication that produces k*k maps, then the sum of k*k shifted windows of
those maps (:class:`ShiftedWindowSum`, accumulated in fp32). Same parameters, same state
dict, same values up to floating-point rounding; about 3x faster on CPU. On other devices,
and while tracing, exporting or compiling, the layer is an ordinary convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mrict.translation.fast_path import use_fast_path


class ShiftedWindowSum(torch.autograd.Function):
    """(B, k*k, Hp, Wp) maps -> (B, 1, Hp - k + 1, Wp - k + 1): map (p, q) read at offset
    (p, q), summed in fp32 (or in the maps' dtype if wider). Its gradient places the output
    gradient at each offset."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, k: int) -> torch.Tensor:  # type: ignore[override]
        _, kk, hp, wp = z.shape
        if kk != k * k:
            raise ValueError(f"expected {k * k} maps, got {kk}")
        h, w = hp - k + 1, wp - k + 1
        ctx.k = k
        ctx.dtype = z.dtype
        out = z[:, 0, :h, :w].to(torch.promote_types(z.dtype, torch.float32), copy=True)
        for p in range(k):
            for q in range(k):
                if p or q:
                    out.add_(z[:, p * k + q, p : p + h, q : q + w])
        return out.unsqueeze(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        k = ctx.k
        b, _, h, w = grad.shape
        g = grad[:, 0].to(ctx.dtype)
        gz = g.new_zeros(b, k * k, h + k - 1, w + k - 1)
        for p in range(k):
            for q in range(k):
                gz[:, p * k + q, p : p + h, q : q + w] = g
        return gz, None


def single_output_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Valid (unpadded, stride 1) convolution of ``x`` (B, C, Hp, Wp) with ``weight``
    (1, C, k, k) -> (B, 1, Hp - k + 1, Wp - k + 1) in fp32 (fp64 for fp64 input), as a
    matmul (bf16 under autocast) plus a shifted-window sum."""
    if weight.dim() != 4 or weight.shape[0] != 1 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"expected a (1, C, k, k) weight, got {tuple(weight.shape)}")
    _, c, k, _ = weight.shape
    b, _, hp, wp = x.shape
    w_maps = weight[0].permute(1, 2, 0).reshape(k * k, c)  # row (p, q) holds w[:, p, q]
    # bmm on the expanded weight: torch.matmul of a 2-D by a 3-D operand computes the
    # transposed product and copies both the result and, in the backward pass, the gradient
    # (about 2.5x slower in total at the quick preset's size)
    z = torch.bmm(w_maps.expand(b, k * k, c), x.reshape(b, c, hp * wp)).view(b, k * k, hp, wp)
    y = ShiftedWindowSum.apply(z, k)
    return y if bias is None else y + bias.view(1, 1, 1, 1).to(y.dtype)


class HeadConv2d(nn.Conv2d):
    """``nn.Conv2d(in_ch, 1, k)`` (stride 1, no padding, no dilation, one group) whose CPU
    forward uses :func:`single_output_conv2d`. Parameters and state-dict keys are those of
    ``nn.Conv2d``."""

    def __init__(self, in_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, 1, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not use_fast_path(x):
            return F.conv2d(x, self.weight, self.bias)
        return single_output_conv2d(x, self.weight, self.bias)
