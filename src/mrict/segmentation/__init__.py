"""Tumour segmentation: a 2D MONAI U-Net trained with Dice + BCE, prediction and metrics."""
