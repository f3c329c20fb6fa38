"""Segmentation training step (U-Net, batch 8, 256x256): mrict's step against a plain
fp32 step with MONAI defaults, interleaved.

mrict's step is ``mrict.segmentation.trainer.train_step`` (the body of ``train_segmenter``'s
loop) with its own parts (``build_unet``, ``DiceBCELoss``, AdamW, the resolved precision).
The reference builds the same MONAI ``UNet`` architecture, MONAI ``DiceLoss(sigmoid=True)``
+ BCE-with-logits, ``torch.optim.Adam`` and runs in plain fp32.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from bench.common import Result, Settings, interleaved, median


def run(s: Settings) -> Result:
    from monai.losses import DiceLoss
    from monai.networks.nets import UNet

    from mrict.config import resolve_config
    from mrict.runtime.device import resolve_precision
    from mrict.segmentation.config import SEG_PRESETS, SegConfig
    from mrict.segmentation.losses import DiceBCELoss
    from mrict.segmentation.model import build_unet
    from mrict.segmentation.trainer import train_step

    res = Result("segmentation", "Segmentation training step: mrict vs MONAI defaults fp32")
    cfg = resolve_config(SegConfig, SEG_PRESETS, "paper", None, {})
    if s.tiny:
        cfg = dataclasses.replace(cfg, image_size=32, channels=(4, 8), num_res_units=1)
        batch, steps = 2, 2
    elif s.quick:
        cfg = dataclasses.replace(cfg, image_size=128)
        batch, steps = 8, 2
    else:
        batch, steps = 8, 5
    device = torch.device(s.device)
    precision = resolve_precision(device, cfg.precision)
    size = cfg.image_size
    gen = torch.Generator().manual_seed(s.seed)
    x = torch.rand(batch, 1, size, size, generator=gen).mul(2).sub(1).to(device)
    y = (torch.rand(batch, 1, size, size, generator=gen) > 0.9).float().to(device)

    torch.manual_seed(s.seed)
    model = build_unet(cfg).to(device)
    loss_fn = DiceBCELoss(cfg.lambda_dice, cfg.lambda_bce)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def mrict_step() -> None:
        float(train_step(model, loss_fn, opt, x, y, device, precision))

    torch.manual_seed(s.seed)
    ref = UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=tuple(cfg.channels),
        strides=(2,) * (len(cfg.channels) - 1),
        num_res_units=cfg.num_res_units,
    ).to(device)
    dice = DiceLoss(sigmoid=True)
    bce = nn.BCEWithLogitsLoss()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=cfg.lr)

    def ref_step() -> None:
        ref.train()
        ref_opt.zero_grad()
        logits = ref(x)
        loss = dice(logits, y) + bce(logits, y)
        loss.backward()
        ref_opt.step()
        float(loss.detach())

    times = interleaved({"mrict": mrict_step, "reference": ref_step}, steps, 1, device)
    t_m, t_r = median(times["mrict"]), median(times["reference"])
    common = {
        "size": size,
        "batch": batch,
        "channels": "/".join(map(str, cfg.channels)),
        "res units": cfg.num_res_units,
        "steps": steps,
    }
    res.rows = [
        {"path": "reference (MONAI defaults, fp32)", **common, "s/step": t_r, "speed-up": 1.0},
        {"path": f"mrict ({precision})", **common, "s/step": t_m, "speed-up": t_r / t_m},
    ]
    res.values = {
        "reference_s": t_r,
        "mrict_s": t_m,
        "precision": precision,
        "reference_all": times["reference"],
        "mrict_all": times["mrict"],
    }
    res.notes.append(
        "mrict's step mirrors train_segmenter's loop body (same network, loss, optimiser and "
        "autocast); batches held in memory on both sides."
    )
    return res
