"""Training loss: soft Dice on sigmoid probabilities plus binary cross-entropy on logits."""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import nn


class DiceBCELoss(nn.Module):
    """``lambda_dice * Dice(sigmoid(logits), mask) + lambda_bce * BCEWithLogits(logits, mask)``.

    ``logits`` and ``mask`` are (B, 1, H, W); the mask is in {0, 1}. Dice is computed over
    the whole batch at once (stable with small tumours and tumour-free slices).
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_bce: float = 1.0) -> None:
        super().__init__()
        self.lambda_dice = float(lambda_dice)
        self.lambda_bce = float(lambda_bce)
        self.dice = DiceLoss(sigmoid=True, include_background=True, batch=True)
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return self.lambda_dice * self.dice(logits, mask) + self.lambda_bce * self.bce(logits, mask)
