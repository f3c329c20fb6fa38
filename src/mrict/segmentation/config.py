"""Segmentation configuration (dataclass) and the ``quick`` / ``paper`` presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mrict.config import RESUMABLE_RUNTIME
from mrict.runtime.device import Precision


@dataclass
class SegConfig:
    """Every knob of a U-Net training run. Inputs are (B, C, H, W) in [-1, 1], H = W =
    ``image_size``, C = 1 + ``len(ct_extra_windows)`` for CT and 1 for MRI; masks
    (B, 1, H, W) in {0, 1}.

    Training runs at most ``iterations`` optimiser steps; every ``val_every`` steps the
    model is scored on the validation split (mean per-patient Dice) and the best one is
    kept. Training stops early after ``patience`` validations in a row that do not beat the
    best Dice by more than ``min_delta`` (0 disables it), never before ``min_iterations``.

    CT reaches the U-Net through HU windows (:mod:`mrict.segmentation.inputs`): channel 1
    is ``ct_window`` (``None`` = the network representation unchanged), each of
    ``ct_extra_windows`` adds a channel. MRI keeps its normalisation (one channel).

    Extra (translated) training sets are combined with the target set by ``schedule``:
    ``"mixed"``: every batch holds ``batch_size`` target slices, drawn exactly as a run
    without extra data draws them, plus ``round(batch_size * (1 - real_fraction) /
    real_fraction)`` extra slices (the batch grows, so passes over the target data stay
    those of the target-only run at every step); ``"concat"``: the sets are pooled and
    sampled uniformly (target slices then make up only their share of each batch);
    ``"pretrain_finetune"`` (the default): no mixing; a separate run pre-trains on the
    extra data and this one fine-tunes it on the target set alone (``init``; the study
    fine-tunes scenario (3)'s segmenter, ``mrict train-seg --extra`` trains
    ``OUT/pretrain`` first). In every schedule but "concat" each step draws exactly
    ``batch_size`` target slices, as the target-only run does.

    Self-training pseudo-labels (study scenario 5): a pixel is confident when its predicted
    probability is >= ``pseudo_confidence`` or <= ``1 - pseudo_confidence``; a target slice
    is kept when its unconfident pixels are at most ``pseudo_max_uncertain`` times the
    number of pixels that are not confidently background (slices predicted tumour-free with
    no unconfident pixel are kept as negatives).
    """

    # data
    image_size: int = 256
    split_seed: int = 0
    augment: bool = True
    #: HU window of the first CT input channel (None: the network representation as is)
    ct_window: tuple[float, float] | None = (-100.0, 200.0)
    #: further CT input channels, one HU window each (e.g. ((-200.0, 1800.0),) for bone)
    ct_extra_windows: tuple[tuple[float, float], ...] = ()
    # network (MONAI UNet; strides of 2 between levels)
    channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    num_res_units: int = 2
    norm: Literal["instance", "batch"] = "instance"
    dropout: float = 0.0
    #: initial output bias = logit of this foreground prior (tumours cover ~1% of pixels), so
    #: training does not start by unlearning a 50% foreground guess
    prior: float = 0.01
    # optimisation
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-5
    iterations: int = 6000
    val_every: int = 250
    patience: int = 8
    min_iterations: int = 0
    min_delta: float = 0.0
    # combining the target set with extra (translated) sets; see the class docstring
    schedule: Literal["mixed", "concat", "pretrain_finetune"] = "pretrain_finetune"
    real_fraction: float = 0.5
    # self-training pseudo-labels (study scenario 5); see the class docstring
    pseudo_confidence: float = 0.9
    pseudo_max_uncertain: float = 0.5
    lambda_dice: float = 1.0
    lambda_bce: float = 1.0
    # inference
    threshold: float = 0.5
    # runtime
    #: fp32 by default: bf16 autocast is faster on AMX/AVX-512-BF16 CPUs and GPUs but was
    #: not shown to leave the selected models' Dice unchanged
    precision: Precision = "fp32"
    device: str = "auto"
    #: iterations between resumable checkpoints (RUN/checkpoint.*); 0 = only on SIGINT/SIGTERM
    checkpoint_every: int = 100
    #: a NaN/Inf loss term: "stop" (names the step and term, keeps the last good checkpoint)
    #: or "skip" (drops that step's update; stops after 20 bad steps in a row)
    nonfinite: Literal["stop", "skip"] = "stop"


#: ``quick``: the CPU demo (96 px like the quick CycleGAN; instance norm, no augmentation,
#: a high learning rate and early stopping: target-only CT and MR reach their best
#: validation Dice around steps 150-350 and stop there, well before the 600-step maximum;
#: precision auto: bf16 on CPUs with AMX or AVX-512 BF16, which gave the same study table
#: as fp32 up to seed noise (README), else fp32); ``paper``: 256 px, wider U-Net, augmentation,
#: long training with early stopping.
SEG_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "image_size": 96,
        "channels": (16, 32, 64, 128),
        "num_res_units": 1,
        "norm": "instance",
        "augment": False,
        "batch_size": 8,
        "lr": 5e-3,
        "iterations": 600,
        "val_every": 25,
        "patience": 5,
        "min_iterations": 150,
        "min_delta": 0.005,
        "checkpoint_every": 100,
        "precision": "auto",
    },
    "paper": {
        "image_size": 256,
        "channels": (32, 64, 128, 256, 512),
        "num_res_units": 2,
        "norm": "instance",
        "batch_size": 16,
        "lr": 1e-3,
        "iterations": 6000,
        "val_every": 250,
        "patience": 8,
        "min_iterations": 1000,
        "min_delta": 0.002,
        "checkpoint_every": 500,
    },
}

#: fields that may differ when resuming a run: they do not change the training trajectory
RESUMABLE_CHANGES = RESUMABLE_RUNTIME
