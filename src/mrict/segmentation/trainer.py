"""U-Net training: iteration-based, augmented on the fly, selected on the validation split.

A run folder holds ``config.yaml``, ``model.{safetensors,json}`` (the selected weights),
``history.csv`` (training loss and validation Dice) and ``loss_curve.png``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrict.config import config_to_dict, save_config
from mrict.data.datasets import SliceDataset, SliceSet
from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_path, atomic_write_text
from mrict.runtime.checkpoint import save_checkpoint
from mrict.runtime.device import autocast_context, pick_device, resolve_precision
from mrict.runtime.progress import progress_bar
from mrict.runtime.seed import seed_everything
from mrict.segmentation.config import SegConfig
from mrict.segmentation.losses import DiceBCELoss
from mrict.segmentation.metrics import evaluate_masks
from mrict.segmentation.model import build_unet

MODEL = "model"


def concat_slice_sets(sets: Sequence[SliceSet]) -> SliceSet:
    """Stack several SliceSets (same image size) into one; the first one's modality is kept."""
    sets = [s for s in sets if len(s)]
    if not sets:
        raise MrictError("no training slices")
    if len(sets) == 1:
        return sets[0]
    sizes = {s.images.shape[1:] for s in sets}
    if len(sizes) != 1:
        raise MrictError(f"training sets differ in image size: {sorted(sizes)}")
    return SliceSet(
        sets[0].modality,
        np.concatenate([s.images for s in sets]),
        np.concatenate([s.masks for s in sets]),
        np.concatenate([s.has_mask for s in sets]),
        [p for s in sets for p in s.patient_ids],
        [x for s in sets for x in s.slices] if all(s.slices for s in sets) else [],
        [x for s in sets for x in s.norm] if all(s.norm for s in sets) else [],
    )


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, images: np.ndarray, device: torch.device, precision: str, batch: int
) -> np.ndarray:
    """(N, H, W) images in [-1, 1] -> (N, H, W) float32 logits."""
    model.eval()
    out = np.empty(images.shape, np.float32)
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch]))[:, None].to(device)
        with autocast_context(device, precision):
            y = model(x)
        out[i : i + batch] = y[:, 0].float().cpu().numpy()
    return out


def validation_dice(
    model: torch.nn.Module, val: SliceSet, device: torch.device, precision: str, cfg: SegConfig
) -> float:
    """Mean per-patient Dice on ``val`` (patients with nothing to find and nothing found
    are left out); nan when nothing is scorable."""
    logits = predict_logits(model, val.images, device, precision, max(cfg.batch_size, 16))
    pred = logits > math.log(cfg.threshold / (1.0 - cfg.threshold))
    return float(
        evaluate_masks(pred, val.masks, val.patient_ids, with_hd95=False)["summary"]["patient_dice"]
    )


def plot_history(history: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Training loss (left axis) and validation Dice (right axis) against iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    its = [h["iteration"] for h in history if not math.isnan(h["train_loss"])]
    ax.plot(its, [h["train_loss"] for h in history if not math.isnan(h["train_loss"])], "C0-")
    ax.set_xlabel("iteration")
    ax.set_ylabel("train loss (Dice + BCE)", color="C0")
    val = [(h["iteration"], h["val_dice"]) for h in history if not math.isnan(h["val_dice"])]
    if val:
        ax2 = ax.twinx()
        ax2.plot([v[0] for v in val], [v[1] for v in val], "C1o-")
        ax2.set_ylabel("validation Dice", color="C1")
        ax2.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())


def _write_history(history: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["iteration", "train_loss", "val_dice", "lr"])
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


def train_step(
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    precision: str,
) -> torch.Tensor:
    """One optimisation step on images ``x`` (B, 1, H, W) in [-1, 1] and masks ``y``
    (B, 1, H, W) in {0, 1}: forward under autocast, loss in fp32, backward, update.
    Returns the (detached) loss."""
    model.train()
    with autocast_context(device, precision):
        logits = model(x)
    loss = loss_fn(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def train_segmenter(
    train: SliceSet | Sequence[SliceSet],
    val: SliceSet | None,
    out_dir: str | Path,
    config: SegConfig,
    seed: int = 0,
    *,
    progress: bool = True,
    title: str = "",
) -> Path:
    """Train a U-Net on the labelled slices of ``train`` and return the run folder.

    Every ``config.val_every`` iterations the model is scored on ``val`` (mean per-patient
    Dice, labelled slices only); the best-scoring weights are saved (ties keep the earlier
    model). Without a usable validation set the final model is saved. Same seed -> same run.
    """
    out = Path(out_dir)
    sets = [train] if isinstance(train, SliceSet) else list(train)
    data = concat_slice_sets([s.labelled() for s in sets])
    size = config.image_size
    if data.images.shape[1:] != (size, size):
        raise MrictError(
            f"training images are {data.images.shape[1]}x{data.images.shape[2]}, "
            f"config image_size is {size}"
        )
    val_set = val.labelled() if val is not None else None
    if val_set is not None and len(val_set) == 0:
        val_set = None
    if config.iterations < 1 or config.val_every < 1 or config.batch_size < 1:
        raise MrictError("iterations, val_every and batch_size must be >= 1")
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    seed_everything(seed)
    device = pick_device(config.device)
    precision = resolve_precision(device, config.precision)
    model = build_unet(config).to(device)
    loss_fn = DiceBCELoss(config.lambda_dice, config.lambda_bce)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.iterations)
    dataset = SliceDataset(data, augment=config.augment, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    best = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    best_iter = 0
    stale = 0
    history: list[dict[str, Any]] = []
    running: list[float] = []
    epoch, order, pos = 0, torch.randperm(len(dataset), generator=gen), 0
    with progress_bar(progress, info=True) as bar:
        task = bar.add_task(title or "segmenter", total=config.iterations, info="")
        for it in range(1, config.iterations + 1):
            idx = []
            while len(idx) < config.batch_size:
                if pos >= len(order):
                    epoch += 1
                    dataset.set_epoch(epoch)
                    order, pos = torch.randperm(len(dataset), generator=gen), 0
                idx.append(int(order[pos]))
                pos += 1
            items = [dataset[i] for i in idx]
            x = torch.stack([b["image"] for b in items]).to(device)
            y = torch.stack([b["mask"] for b in items]).to(device)
            loss = train_step(model, loss_fn, opt, x, y, device, precision)
            sched.step()
            running.append(float(loss.detach()))
            if it % config.val_every == 0 or it == config.iterations:
                score = (
                    validation_dice(model, val_set, device, precision, config)
                    if val_set is not None
                    else math.nan
                )
                history.append(
                    {
                        "iteration": it,
                        "train_loss": float(np.mean(running)),
                        "val_dice": score,
                        "lr": opt.param_groups[0]["lr"],
                    }
                )
                running = []
                improved = val_set is None or (not math.isnan(score) and score > best)
                if improved:
                    best = score if val_set is not None else best
                    best_iter = it
                    best_state = {
                        k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                    }
                    stale = 0
                else:
                    stale += 1
                bar.update(task, info=f"val Dice {score:.3f} (best {max(best, 0):.3f})")
                if config.patience and stale >= config.patience:
                    break
            bar.advance(task)
    if best_state is None:  # validation never scorable: keep the final weights
        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        best_iter = history[-1]["iteration"] if history else config.iterations
    meta = {
        "config": config_to_dict(config),
        "modality": data.modality,
        "seed": seed,
        "best_iteration": best_iter,
        "best_val_dice": None if not math.isfinite(best) else best,
        "train_slices": len(data),
        "train_patients": len(data.patients()),
        "val_patients": len(val_set.patients()) if val_set is not None else 0,
    }
    _write_history(history, out / "history.csv")
    plot_history(history, out / "loss_curve.png", title)
    save_checkpoint(out / MODEL, {"unet": best_state}, meta)
    return out
