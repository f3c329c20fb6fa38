"""Segmentation configuration (dataclass) and the ``quick`` / ``paper`` presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass
class SegConfig:
    """Every knob of a U-Net training run. Images are (B, 1, H, W) in [-1, 1], H = W =
    ``image_size``; masks (B, 1, H, W) in {0, 1}.

    Training runs ``iterations`` optimiser steps; every ``val_every`` steps the model is
    scored on the validation split (mean per-patient Dice) and the best one is kept. Training
    stops early after ``patience`` validations without improvement (0 disables it).
    """

    # data
    image_size: int = 256
    split_seed: int = 0
    augment: bool = True
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
    lambda_dice: float = 1.0
    lambda_bce: float = 1.0
    # inference
    threshold: float = 0.5
    # runtime
    precision: Precision = "auto"
    device: str = "auto"
    #: iterations between resumable checkpoints (RUN/checkpoint.*); 0 = only on SIGINT/SIGTERM
    checkpoint_every: int = 100
    #: a NaN/Inf loss term: "stop" (names the step and term, keeps the last good checkpoint)
    #: or "skip" (drops that step's update; stops after 20 bad steps in a row)
    nonfinite: Literal["stop", "skip"] = "stop"


#: ``quick``: the CPU demo (16 U-Nets in a few minutes on 2 cores; 96 px like the quick
#: CycleGAN; batch norm, no augmentation and a high learning rate so 300 steps suffice);
#: ``paper``: 256 px, wider U-Net, augmentation, long training with early stopping.
SEG_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "image_size": 96,
        "channels": (16, 32, 64, 128),
        "num_res_units": 1,
        "norm": "batch",
        "augment": False,
        "batch_size": 8,
        "lr": 5e-3,
        "iterations": 300,
        "val_every": 50,
        "patience": 0,
        "checkpoint_every": 100,
    },
    "paper": {
        "image_size": 256,
        "channels": (32, 64, 128, 256, 512),
        "num_res_units": 2,
        "batch_size": 16,
        "lr": 1e-3,
        "iterations": 6000,
        "val_every": 250,
        "patience": 8,
        "checkpoint_every": 500,
    },
}

#: fields that may differ when resuming a run: they do not change the training trajectory
RESUMABLE_CHANGES = frozenset({"checkpoint_every", "nonfinite", "device"})
