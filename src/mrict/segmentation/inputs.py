"""What the segmenter sees: CT through Hounsfield-unit windows, MRI as normalised.

Images arrive in the networks' representation, (N, H, W) float32 in [-1, 1]
(:mod:`mrict.data.datasets`). For CT, each window ``(lo, hi)`` in HU gives one input
channel: ``unit_to_hu(x)`` -> clip to ``[lo, hi]`` -> linear onto [-1, 1] (``lo`` -> -1,
``hi`` -> +1). ``None`` as a window keeps the network representation unchanged. The first
channel uses ``SegConfig.ct_window``, further channels ``SegConfig.ct_extra_windows``. MRI
keeps its normalisation (one channel). :func:`prepare_inputs` is the single place this
happens; training, validation, prediction and the study all go through it, so real and
translated CT are windowed identically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mrict.data.intensity import unit_to_hu
from mrict.errors import MrictError

Window = tuple[float, float] | None


def check_window(window: Any, name: str = "ct_window") -> Window:
    """Validate one HU window (``None`` or ``(lo, hi)`` with finite ``lo < hi``)."""
    if window is None:
        return None
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError) as exc:
        raise MrictError(f"{name}: expected (lo, hi) in HU, got {window!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise MrictError(f"{name}: need finite lo < hi in HU, got ({lo:g}, {hi:g})")
    return (lo, hi)


def input_windows(config: Any, modality: str) -> list[Window]:
    """The windows (one per input channel) for ``modality``: ``[None]`` for MRI, else
    ``[config.ct_window, *config.ct_extra_windows]``."""
    if str(modality).upper() != "CT":
        return [None]
    first = check_window(getattr(config, "ct_window", None))
    extra = [check_window(w, "ct_extra_windows") for w in getattr(config, "ct_extra_windows", ())]
    if any(w is None for w in extra):
        raise MrictError("ct_extra_windows: every extra channel needs a (lo, hi) window")
    return [first, *extra]


def input_channels(config: Any, modality: str) -> int:
    """Number of U-Net input channels for ``modality`` under ``config``."""
    return len(input_windows(config, modality))


def describe_inputs(config: Any, modality: str) -> dict[str, Any]:
    """JSON description of the input transform (stored in ``model.json``)."""
    windows = input_windows(config, modality)
    return {
        "modality": str(modality).upper(),
        "channels": [
            "network representation" if w is None else f"HU window [{w[0]:g}, {w[1]:g}]"
            for w in windows
        ],
        "windows_hu": [None if w is None else list(w) for w in windows],
    }


def hu_window(images: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Network-representation CT (any shape, [-1, 1]) -> HU clipped to ``[lo, hi]`` and
    mapped linearly onto [-1, 1]; float32, same shape."""
    hu = unit_to_hu(np.asarray(images, dtype=np.float32))
    out = (np.clip(hu, lo, hi) - lo) * (2.0 / (hi - lo)) - 1.0
    return np.asarray(out, dtype=np.float32)


def apply_windows(images: np.ndarray, windows: Sequence[Window]) -> np.ndarray:
    """(N, H, W) network-representation images -> (N, C, H, W) float32, one channel per
    window (``None`` = unchanged)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"expected (N, H, W) images, got shape {images.shape}")
    channels = [images if w is None else hu_window(images, w[0], w[1]) for w in windows]
    return np.ascontiguousarray(np.stack(channels, axis=1), dtype=np.float32)


def prepare_inputs(images: np.ndarray, modality: str, config: Any) -> np.ndarray:
    """(N, H, W) images of ``modality`` in the network representation -> the segmenter's
    (N, C, H, W) float32 input under ``config`` (see the module docstring)."""
    return apply_windows(images, input_windows(config, modality))
