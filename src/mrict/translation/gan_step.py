"""The pieces of one CycleGAN training step: a batch from the epoch order, the joint
segmenters' update and checkpoint selection on paired validation (the generator loss terms
are in :mod:`mrict.translation.trainer`)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mrict.runtime.atomic import atomic_write_text
from mrict.translation.config import GanConfig
from mrict.translation.data import UnpairedData
from mrict.translation.lesion import masked_seg_loss
from mrict.translation.networks import CycleGenerators
from mrict.translation.selection import score_generators, selection_rank
from mrict.translation.train_state import best_entry

SELECTION_CSV = "selection.csv"


@dataclass
class Batch:
    """One step's slices on the device: images (B, 1, H, W) in [-1, 1], tumour masks
    (B, 1, H, W) in {0, 1} and whether each slice carries a mask (B,)."""

    mr: torch.Tensor
    ct: torch.Tensor
    mask_mr: torch.Tensor
    mask_ct: torch.Tensor
    lab_mr: torch.Tensor
    lab_ct: torch.Tensor


def make_batch(
    data: UnpairedData,
    orders: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    sl: slice,
    cfg: GanConfig,
    device: torch.device,
) -> Batch:
    """The slices ``sl`` of this epoch's order, flipped where the order says (``augment``)."""
    i_mr, i_ct = orders[0][sl], orders[1][sl]
    real_mr, real_ct = data.mr[i_mr], data.ct[i_ct]
    mask_mr, mask_ct = data.mr_masks[i_mr], data.ct_masks[i_ct]
    if cfg.augment:
        f_mr = orders[2][sl][:, 0, None, None, None]
        f_ct = orders[2][sl][:, 1, None, None, None]
        real_mr = torch.where(f_mr, real_mr.flip(-1), real_mr)
        real_ct = torch.where(f_ct, real_ct.flip(-1), real_ct)
        mask_mr = torch.where(f_mr, mask_mr.flip(-1), mask_mr)
        mask_ct = torch.where(f_ct, mask_ct.flip(-1), mask_ct)
    real_mr, real_ct = real_mr.to(device), real_ct.to(device)
    if cfg.channels_last:
        real_mr = real_mr.contiguous(memory_format=torch.channels_last)
        real_ct = real_ct.contiguous(memory_format=torch.channels_last)
    return Batch(
        real_mr,
        real_ct,
        mask_mr.to(device),
        mask_ct.to(device),
        data.mr_labelled[i_mr].to(device),
        data.ct_labelled[i_ct].to(device),
    )


def segmenter_step(
    segs: nn.Module,
    opt: torch.optim.Optimizer,
    out: dict[str, torch.Tensor],
    b: Batch,
    use_target_masks: bool,
    ac: Callable[[], Any],
    no_ac: Callable[[], Any],
    finite: Callable[[dict[str, torch.Tensor]], bool],
) -> dict[str, torch.Tensor]:
    """One update of the jointly trained segmenters: the MR segmenter learns CT->MR
    translations with the CT masks, the CT segmenter MR->CT translations with the MR masks;
    with ``use_target_masks`` each also learns the real slices of its modality with theirs.
    Returns the loss terms ``S_mr`` and ``S_ct``."""
    in_mr, in_ct = out["fake_mr"].detach(), out["fake_ct"].detach()
    y_mr, y_ct, l_mr, l_ct = b.mask_ct, b.mask_mr, b.lab_ct, b.lab_mr
    if use_target_masks:
        in_mr, in_ct = torch.cat([in_mr, b.mr]), torch.cat([in_ct, b.ct])
        y_mr, y_ct = torch.cat([y_mr, b.mask_mr]), torch.cat([y_ct, b.mask_ct])
        l_mr, l_ct = torch.cat([l_mr, b.lab_mr]), torch.cat([l_ct, b.lab_ct])
    with ac():
        p_mr, p_ct = segs(in_mr, in_ct)
    with no_ac():
        terms = {
            "S_mr": masked_seg_loss(p_mr, y_mr, l_mr),
            "S_ct": masked_seg_loss(p_ct, y_ct, l_ct),
        }
    if finite(terms):
        opt.zero_grad(set_to_none=True)
        (terms["S_mr"] + terms["S_ct"]).backward()
        opt.step()
    return terms


def select(
    best: dict[str, Any], gens: CycleGenerators, val: Any, iteration: int, run_dir: Path | None
) -> None:
    """Score the generators on the paired validation set; keep a copy of the best ones
    (:func:`selection_rank`: those that carry the tumour first, then the lowest score) in
    ``best`` and (``run_dir`` given) rewrite RUN/selection.csv."""
    scores = score_generators(gens.mr2ct, gens.ct2mr, val)
    previous = best_entry(best)
    best["history"].append({"iteration": iteration, **scores})
    new_rank = selection_rank(scores)
    if math.isfinite(new_rank[1]) and (previous is None or new_rank < selection_rank(previous)):
        best["score"], best["iteration"] = scores["score"], iteration
        best["state"] = {k: v.detach().cpu().clone() for k, v in gens.state_dict().items()}
    if run_dir is not None:
        fields = list(dict.fromkeys(k for h in best["history"] for k in h))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(best["history"])
        atomic_write_text(run_dir / SELECTION_CSV, buf.getvalue())


def set_requires_grad(flag: bool, *modules: nn.Module | None) -> None:
    for module in modules:
        if module is not None:
            for p in module.parameters():
                p.requires_grad_(flag)
