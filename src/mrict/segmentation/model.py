"""The segmentation network: MONAI's 2D residual U-Net, C input channels, one logit."""

from __future__ import annotations

import math

from monai.networks.nets import UNet
from torch import nn

from mrict.errors import MrictError
from mrict.segmentation.config import SegConfig

#: config fields that define the architecture: every one must be in a trained model's
#: model.json (:func:`mrict.segmentation.predict.load_segmenter`), and an ``--init`` model
#: must match them all (fine-tuning)
ARCH_KEYS = ("image_size", "channels", "num_res_units", "norm", "dropout")
#: those of them that set the weights' names and shapes (with the input channels):
#: load_segmenter names them when model.json and the weights disagree
WEIGHT_KEYS = ("channels", "num_res_units", "norm")


def build_unet(config: SegConfig, in_channels: int = 1) -> nn.Module:
    """U-Net mapping (B, ``in_channels``, H, W) inputs in [-1, 1] to (B, 1, H, W) logits.

    H and W must be divisible by 2 ** (len(channels) - 1).
    """
    channels = tuple(int(c) for c in config.channels)
    if len(channels) < 2:
        raise MrictError(f"channels needs at least two levels, got {channels}")
    factor = 2 ** (len(channels) - 1)
    if config.image_size % factor:
        raise MrictError(
            f"image_size {config.image_size} is not divisible by {factor} "
            f"(2 ** (levels - 1) for channels {channels})"
        )
    net = UNet(
        spatial_dims=2,
        in_channels=int(in_channels),
        out_channels=1,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=int(config.num_res_units),
        norm=config.norm,
        dropout=float(config.dropout),
    )
    if not 0.0 < config.prior < 1.0:
        raise MrictError(f"prior must be in (0, 1), got {config.prior}")
    last = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)][-1]
    if last.bias is not None:
        nn.init.constant_(last.bias, math.log(config.prior / (1.0 - config.prior)))
    return net
