"""Square padding and resizing of slices to the networks' size, and the exact way back."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def pad_to_square(x: np.ndarray, value: float) -> np.ndarray:
    """Centre (H, W) in a square of side max(H, W), filling with ``value``."""
    h, w = x.shape
    side = max(h, w)
    if h == w:
        return x
    out = np.full((side, side), value, dtype=x.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = x
    return out


def crop_from_square(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`pad_to_square` for an original ``shape`` (H, W)."""
    h, w = shape
    side = x.shape[0]
    top, left = (side - h) // 2, (side - w) // 2
    return x[top : top + h, left : left + w]


def resize_batch(x: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize (N, S, S) to (N, size, size): anti-aliased bilinear, or nearest for masks."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
    if nearest:
        out = F.interpolate(t, size=(size, size), mode="nearest-exact")
    else:
        out = F.interpolate(
            t, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return out[:, 0].numpy()


def to_network(x: np.ndarray, size: int, pad_value: float, *, nearest: bool = False) -> np.ndarray:
    """One (H, W) slice -> (size, size): pad to square with ``pad_value``, then resize."""
    return resize_batch(pad_to_square(x, pad_value)[None], size, nearest=nearest)[0]


def from_network(x: np.ndarray, shape: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    """(size, size) -> original (H, W): resize to the padded square, then crop."""
    side = max(shape)
    return crop_from_square(resize_batch(x[None], side, nearest=nearest)[0], shape)
