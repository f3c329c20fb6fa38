"""U-Net training: iteration-based, augmented on the fly, selected on the validation split.

A run folder holds ``config.yaml``, ``model.{safetensors,json}`` (the selected weights),
``history.csv`` (training loss and validation Dice) and ``loss_curve.png``; while training,
``checkpoint.{safetensors,json}`` holds everything needed to resume exactly.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrict.config import check_resumable, config_to_dict, save_config
from mrict.data.datasets import SliceDataset, SliceSet
from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_path, atomic_write_text
from mrict.runtime.checkpoint import load_checkpoint, load_module_state, save_checkpoint
from mrict.runtime.device import autocast_context, pick_device, resolve_precision
from mrict.runtime.interrupt import TrainingInterrupted, stop_on_signals
from mrict.runtime.numerics import LossGuard
from mrict.runtime.progress import progress_bar
from mrict.runtime.seed import rng_state, seed_everything
from mrict.segmentation.config import RESUMABLE_CHANGES, SegConfig
from mrict.segmentation.losses import DiceBCELoss
from mrict.segmentation.metrics import evaluate_masks
from mrict.segmentation.model import build_unet

MODEL = "model"
CHECKPOINT = "checkpoint"
CHECKPOINT_KIND = "mrict-segmenter-checkpoint"


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


def loss_terms(
    loss_fn: torch.nn.Module, logits: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The weighted terms of the training loss (their sum is ``loss_fn(logits, y)``):
    ``{"dice": ..., "bce": ...}`` for :class:`DiceBCELoss`, else ``{"loss": ...}``."""
    if isinstance(loss_fn, DiceBCELoss):
        logits = logits.float()
        return {
            "dice": loss_fn.lambda_dice * loss_fn.dice(logits, y),
            "bce": loss_fn.lambda_bce * loss_fn.bce(logits, y),
        }
    return {"loss": loss_fn(logits, y)}


def train_step(
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    precision: str,
    check: Callable[[dict[str, torch.Tensor]], bool] | None = None,
) -> torch.Tensor:
    """One optimisation step on images ``x`` (B, 1, H, W) in [-1, 1] and masks ``y``
    (B, 1, H, W) in {0, 1}: forward under autocast, loss in fp32, backward, update.

    ``check(terms)`` (optional) sees the loss terms before the update; when it returns
    False the update is skipped. Returns the (detached) loss."""
    model.train()
    with autocast_context(device, precision):
        logits = model(x)
    terms = loss_terms(loss_fn, logits, y)
    loss = terms["loss"] if "loss" in terms else terms["dice"] + terms["bce"]
    if check is not None and not check(terms):
        return loss.detach()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def data_fingerprint(data: SliceSet) -> str:
    """Short digest of the training slices (images, masks, patients): a resumed run must
    see exactly the data the interrupted one saw."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.ascontiguousarray(data.images).tobytes())
    digest.update(np.ascontiguousarray(data.masks).tobytes())
    digest.update("\0".join(data.patient_ids).encode())
    return digest.hexdigest()


def check_run_folder(out: str | Path, resume: bool) -> bool:
    """Validate ``out`` for a new (``resume=False``) or resumed run before any work.

    Refuses a finished run (it holds ``model.json``), a folder holding a checkpoint
    without ``resume``, and ``resume`` on a folder that is not a run. Returns True when
    there is a checkpoint to resume from (``resume`` on a run stopped before its first
    checkpoint starts again from the beginning and returns False).
    """
    out = Path(out)
    if (out / f"{MODEL}.json").exists():
        raise MrictError(
            "run folder already holds a model (finished run); choose another --out", out
        )
    has_ckpt = (out / f"{CHECKPOINT}.json").is_file()
    if not resume:
        if has_ckpt:
            raise MrictError(
                "run folder holds an interrupted run's checkpoint; pass --resume to continue "
                "it or choose another --out",
                out,
            )
        return False
    if not has_ckpt and not (out / "config.yaml").is_file():
        raise MrictError("nothing to resume: no checkpoint in this run folder", out)
    return has_ckpt


def _copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train_segmenter(
    train: SliceSet | Sequence[SliceSet],
    val: SliceSet | None,
    out_dir: str | Path,
    config: SegConfig,
    seed: int = 0,
    *,
    progress: bool = True,
    title: str = "",
    resume: bool = False,
    resume_command: str | None = None,
    on_step: Callable[[int], None] | None = None,
) -> Path:
    """Train a U-Net on the labelled slices of ``train`` and return the run folder.

    Every ``config.val_every`` iterations the model is scored on ``val`` (mean per-patient
    Dice, labelled slices only); the best-scoring weights are saved (ties keep the earlier
    model). Without a usable validation set the final model is saved. Same seed -> same run.

    Every ``config.checkpoint_every`` iterations (and on SIGINT/SIGTERM, which then raise
    :class:`TrainingInterrupted` naming ``resume_command``) the whole training state goes
    to ``RUN/checkpoint.{safetensors,json}``; ``resume=True`` continues from it bit-exactly
    (same data, seed and config required). The checkpoint is removed once the model is
    written. A NaN/Inf loss term stops training (or skips the step, ``nonfinite="skip"``).
    ``on_step(iteration)`` is called after every completed step (after its checkpoint).
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
    if config.checkpoint_every < 0:
        raise MrictError(f"checkpoint_every must be >= 0, got {config.checkpoint_every}")
    guard = LossGuard(config.nonfinite)
    has_ckpt = check_run_folder(out, resume)
    fingerprint = data_fingerprint(data)
    val_fingerprint = data_fingerprint(val_set) if val_set is not None else ""
    ckpt: dict[str, Any] | None = None
    ckpt_json = out / f"{CHECKPOINT}.json"
    if has_ckpt:
        ckpt, meta = load_checkpoint(out / CHECKPOINT)
        if meta.get("kind") != CHECKPOINT_KIND:
            raise MrictError("not a segmentation training checkpoint", ckpt_json)
        check_resumable(meta.get("config", {}), config, RESUMABLE_CHANGES, out)
        if meta.get("seed") != seed:
            raise MrictError(
                f"cannot resume with a different seed ({seed}; the run used {meta.get('seed')})",
                out,
            )
        if (meta.get("data"), meta.get("val_data")) != (fingerprint, val_fingerprint):
            raise MrictError(
                "cannot resume with different training or validation data (data folder, "
                "--extra or --label-fraction changed)",
                out,
            )
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
    start = 0
    if ckpt is not None:
        try:
            load_module_state(model, ckpt["unet"], "unet")
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            gen.set_state(ckpt["generator"])
            order = ckpt["order"]
            if len(order) != len(dataset):
                raise MrictError("checkpoint data order does not fit the training set", ckpt_json)
            epoch, pos, start = int(ckpt["epoch"]), int(ckpt["pos"]), int(ckpt["iteration"])
            dataset.set_epoch(int(ckpt["dataset_epoch"]))
            best = float(ckpt["best"])
            best_state = ckpt["best_state"] if ckpt["has_best"] else None
            best_iter, stale = int(ckpt["best_iter"]), int(ckpt["stale"])
            history = [dict(h) for h in ckpt["history"]]
            running = [float(v) for v in ckpt["running"]]
            guard.skipped = int(ckpt.get("skipped", 0))
            rng = ckpt["rng"]
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(list(rng["cuda"]))
        except MrictError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:120]
            raise MrictError(
                f"checkpoint is damaged ({type(exc).__name__}: {first}); start a new run",
                ckpt_json,
            ) from exc
    guard.checkpoint = ckpt_json if ckpt is not None else None

    def checkpoint(iteration: int) -> None:
        state = {
            "unet": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "generator": gen.get_state(),
            "order": order,
            "epoch": epoch,
            "pos": pos,
            "dataset_epoch": dataset.epoch,
            "iteration": iteration,
            "best": best,
            "has_best": best_state is not None,
            "best_state": best_state or {},
            "best_iter": best_iter,
            "stale": stale,
            "history": history,
            "running": running,
            "skipped": guard.skipped,
            "rng": rng_state(),
        }
        meta = {
            "kind": CHECKPOINT_KIND,
            "iteration": iteration,
            "total_iterations": config.iterations,
            "seed": seed,
            "data": fingerprint,
            "val_data": val_fingerprint,
            "config": config_to_dict(config),
        }
        save_checkpoint(out / CHECKPOINT, state, meta)
        guard.checkpoint = ckpt_json

    it = start
    with stop_on_signals() as stop, progress_bar(progress, info=True) as bar:
        task = bar.add_task(title or "segmenter", total=config.iterations, info="")
        bar.update(task, completed=start)
        while it < config.iterations:
            it += 1
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
            loss = train_step(
                model, loss_fn, opt, x, y, device, precision, lambda t, s=it: guard.check(t, s)
            )
            sched.step()
            value = float(loss)
            if math.isfinite(value):
                running.append(value)
            if it % config.val_every == 0 or it == config.iterations:
                score = (
                    validation_dice(model, val_set, device, precision, config)
                    if val_set is not None
                    else math.nan
                )
                history.append(
                    {
                        "iteration": it,
                        "train_loss": float(np.mean(running)) if running else math.nan,
                        "val_dice": score,
                        "lr": opt.param_groups[0]["lr"],
                    }
                )
                running = []
                improved = val_set is None or (not math.isnan(score) and score > best)
                if improved:
                    best = score if val_set is not None else best
                    best_iter = it
                    best_state = _copy_state(model)
                    stale = 0
                else:
                    stale += 1
                bar.update(task, info=f"val Dice {score:.3f} (best {max(best, 0):.3f})")
                if config.patience and stale >= config.patience:
                    break
            bar.advance(task)
            periodic = config.checkpoint_every and it % config.checkpoint_every == 0
            if periodic and it < config.iterations:
                checkpoint(it)
            if on_step is not None:
                on_step(it)
            if stop and it < config.iterations:
                if not periodic:
                    checkpoint(it)
                hint = resume_command or f"train_segmenter(..., {str(out)!r}, resume=True)"
                raise TrainingInterrupted(it, ckpt_json, hint)
    if best_state is None:  # validation never scorable: keep the final weights
        best_state = _copy_state(model)
        best_iter = history[-1]["iteration"] if history else it
    meta = {
        "config": config_to_dict(config),
        "modality": data.modality,
        "seed": seed,
        "best_iteration": best_iter,
        "best_val_dice": None if not math.isfinite(best) else best,
        "train_slices": len(data),
        "train_patients": len(data.patients()),
        "val_patients": len(val_set.patients()) if val_set is not None else 0,
        "skipped_steps": guard.skipped,
    }
    _write_history(history, out / "history.csv")
    plot_history(history, out / "loss_curve.png", title)
    save_checkpoint(out / MODEL, {"unet": best_state}, meta)
    for suffix in (".json", ".safetensors", ".next.safetensors"):
        (out / f"{CHECKPOINT}{suffix}").unlink(missing_ok=True)
    return out
