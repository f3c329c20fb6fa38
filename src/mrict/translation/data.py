"""Training data for the CycleGAN: the train split of both modalities, in memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mrict.data.datasets import load_modality
from mrict.data.splits import split_patients
from mrict.errors import MrictError

#: number of quantiles kept of each modality's train intensities (histogram baseline)
N_QUANTILES = 1001


@dataclass
class UnpairedData:
    """``mr`` and ``ct``: (N, 1, H, W) float32 in [-1, 1], the train split of each modality;
    ``mr_masks`` / ``ct_masks``: (N, 1, H, W) float32 tumour masks in {0, 1}, with
    ``mr_labelled`` / ``ct_labelled`` (N,) bool telling which slices have a mask."""

    mr: torch.Tensor
    ct: torch.Tensor
    mr_patients: list[str]
    ct_patients: list[str]
    mr_masks: torch.Tensor
    ct_masks: torch.Tensor
    mr_labelled: torch.Tensor
    ct_labelled: torch.Tensor

    def quantiles(self) -> dict[str, list[float]]:
        """Intensity quantiles (in [-1, 1]) of each modality's train images."""
        q = np.linspace(0.0, 1.0, N_QUANTILES)
        return {
            "MR": np.quantile(self.mr.numpy(), q).astype(float).round(6).tolist(),
            "CT": np.quantile(self.ct.numpy(), q).astype(float).round(6).tolist(),
        }


def load_unpaired(
    data_root, image_size: int, split_seed: int = 0, progress: bool = True
) -> UnpairedData:
    """Read both modalities under ``data_root`` and keep each one's train-split patients
    with their tumour masks (for the tumour-aware terms). Raises :class:`MrictError` when
    a modality has no train images."""
    out, masks, labelled = {}, {}, {}
    patients = {}
    for modality in ("MR", "CT"):
        full = load_modality(data_root, modality, size=image_size, progress=progress)
        train = split_patients(full.patients(), seed=split_seed)["train"]
        subset = full.select(train)
        if len(subset) == 0:
            raise MrictError(f"no {modality} images in the train split", data_root)
        out[modality] = torch.from_numpy(np.ascontiguousarray(subset.images))[:, None]
        masks[modality] = torch.from_numpy(subset.masks.astype(np.float32))[:, None]
        labelled[modality] = torch.from_numpy(np.asarray(subset.has_mask, dtype=bool))
        patients[modality] = train
    return UnpairedData(
        out["MR"],
        out["CT"],
        patients["MR"],
        patients["CT"],
        masks["MR"],
        masks["CT"],
        labelled["MR"],
        labelled["CT"],
    )


def epoch_order(
    seed: int, epoch: int, n_mr: int, n_ct: int, length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global sample order of one epoch, a pure function of (seed, epoch).

    Returns ``length`` MR indices, ``length`` CT indices (each modality's permutations
    concatenated until long enough) and ``length`` horizontal-flip flags (2 per row: MR, CT).
    """
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))

    def indices(n: int) -> torch.Tensor:
        reps = -(-length // n)
        return torch.cat([torch.randperm(n, generator=gen) for _ in range(reps)])[:length]

    mr = indices(n_mr)
    ct = indices(n_ct)
    flips = torch.rand(length, 2, generator=gen) < 0.5
    return mr, ct, flips
