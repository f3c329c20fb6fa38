"""On-the-fly augmentation with identical geometry for image and mask (MONAI transforms)."""

from __future__ import annotations

import math
import zlib

import torch
from monai.transforms import Compose, RandAdjustContrastd, RandFlipd, RandRotated


def build_augment() -> Compose:
    """Rotation within +-30 deg (p=0.5), horizontal and vertical flips (p=0.5 each) and a
    gamma contrast change in [0.7, 1.5] (p=0.5, image only). Images are expected in [0, 2]
    (shifted) so that rotation pads with the background value."""
    return Compose(
        [
            RandRotated(
                keys=["image", "mask"],
                range_x=math.radians(30),
                prob=0.5,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
                keep_size=True,
            ),
            RandFlipd(keys=["image", "mask"], prob=0.5, spatial_axis=0),
            RandFlipd(keys=["image", "mask"], prob=0.5, spatial_axis=1),
            RandAdjustContrastd(keys=["image"], prob=0.5, gamma=(0.7, 1.5)),
        ]
    )


def apply_augment(
    transform: Compose, image: torch.Tensor, mask: torch.Tensor, key: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``transform`` to (1, H, W) image in [-1, 1] and mask {0, 1}, seeded by ``key``."""
    seed = zlib.crc32(repr(key).encode()) & 0x7FFFFFFF
    transform.set_random_state(seed=seed)
    out = transform({"image": image + 1.0, "mask": mask})
    img = torch.as_tensor(out["image"]).float().clamp(0.0, 2.0) - 1.0
    msk = (torch.as_tensor(out["mask"]).float() > 0.5).float()
    return img.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor)
