"""CycleGAN configuration (dataclass) and the ``quick`` / ``paper`` presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mrict.config import RESUMABLE_RUNTIME
from mrict.runtime.device import Precision

FeatureLoss = Literal["mind", "vgg16", "resnet50", "none"]
CtMap = Literal["soft_tissue", "linear"]
Upsample = Literal["resize", "transpose"]
LesionTerm = Literal["distribution", "mean"]


@dataclass
class GanConfig:
    """Every knob of a CycleGAN run. Images are (B, 1, H, W) in [-1, 1], H = W = ``image_size``.

    Length: ``iterations`` > 0 fixes the number of optimiser steps; otherwise ``epochs``
    passes over the larger modality's train split. The learning rate is constant, then
    decays linearly to 0 over the last ``decay_fraction`` of the steps.
    ``lambda_identity`` is a fraction of ``lambda_cycle`` (as in the reference CycleGAN).

    Tumour-aware terms (they need the masks that labelled train slices have; slices without
    a mask simply do not contribute, and a data set without masks trains without them):
    ``lambda_seg`` weighs the segmentation-consistency loss, the Dice + BCE of a jointly
    trained target-modality segmenter on each translated slice against its source mask;
    ``lambda_lesion`` weighs the lesion-appearance term, in the form ``lesion_term``:
    ``mean``, the L1 distance of each translated tumour's mean intensity and tumour-to-ring
    contrast from the averages of real target tumours, or ``distribution``, the
    Wasserstein-1 distance of the batch's translated tumour (and ring) intensities from
    those of real target tumours.
    ``use_target_masks``: the segmenters also learn from real target slices with their
    masks, and the lesion term (which needs real target tumours) is on; with False each
    direction uses only its source modality's masks.

    Selection: every ``select_every`` iterations (and at the end) the generators are scored
    on the paired validation set ``DATA/paired_val`` when it exists (never the test set), and
    the best-scoring ones are written as ``generators``; 0 keeps the final ones.
    """

    # data
    image_size: int = 256
    split_seed: int = 0
    augment: bool = True  # random horizontal flips, drawn from (seed, epoch)
    # networks
    ngf: int = 64
    n_blocks: int = 9
    upsample: Upsample = "resize"
    #: CT intensity map of the networks (mrict.data.intensity.CT_MAPS)
    ct_map: CtMap = "soft_tissue"
    ndf: int = 64
    n_layers_d: int = 3
    #: the CT discriminator also sees a bone window (HU 200-2000) of each image
    d_bone_window: bool = False
    # optimisation
    batch_size: int = 1
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    epochs: int = 200
    iterations: int = 0
    decay_fraction: float = 0.5
    pool_size: int = 50
    # losses
    lambda_adv: float = 1.0
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    lambda_ssim: float = 1.0
    feature_loss: FeatureLoss = "mind"
    lambda_feature: float = 1.0
    feature_weights: str | None = None  # local torchvision-compatible weights (vgg16/resnet50)
    #: read a pickle-based (.pth/.pt) feature_weights file, with torch.load(weights_only=True);
    #: off by default: only safetensors are read
    feature_weights_allow_pickle: bool = False
    lambda_seg: float = 1.0
    lambda_lesion: float = 1.0
    lesion_term: LesionTerm = "mean"
    use_target_masks: bool = True
    #: channels of the jointly trained segmenters (MONAI UNet, instance norm)
    seg_channels: tuple[int, ...] = (16, 32, 64)
    seg_lr: float = 1e-3
    select_every: int = 0
    # runtime
    seed: int = 0
    precision: Precision = "auto"
    compile: bool = False
    channels_last: bool = False
    device: str = "auto"
    # outputs
    log_every: int = 10
    checkpoint_every: int = 200  # iterations; a checkpoint is also written at the end
    sample_count: int = 4
    # numerical faults: "stop" names the step and loss term and keeps the last good
    # checkpoint; "skip" drops that step's update (and stops after 20 bad steps in a row)
    nonfinite: Literal["stop", "skip"] = "stop"


#: ``quick``: a CPU demo that trains in a few minutes on 2 cores; ``paper``: the reference setup.
GAN_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "image_size": 96,
        "ngf": 24,
        "n_blocks": 6,
        "ndf": 32,
        "batch_size": 4,
        "iterations": 400,
        "decay_fraction": 0.5,
        "precision": "auto",
        "checkpoint_every": 100,
        # no identity term: it costs two extra generator passes per step and an MRI is not
        # a CT, so it adds little here; MIND carries the structure instead
        "lambda_identity": 0.0,
        "lambda_feature": 5.0,
        "select_every": 50,
    },
    "paper": {
        "image_size": 256,
        "ngf": 64,
        "n_blocks": 9,
        "ndf": 64,
        "batch_size": 1,
        "epochs": 200,
        "iterations": 0,
        "decay_fraction": 0.5,
        "checkpoint_every": 2000,
        "select_every": 2000,
    },
}

#: fields that may change when resuming a run (they do not alter the training trajectory
#: except ``iterations``/``epochs``, which extend or shorten it)
RESUMABLE_CHANGES = RESUMABLE_RUNTIME | {
    "iterations",
    "epochs",
    "log_every",
    "compile",
    "sample_count",
    "feature_weights_allow_pickle",
}
