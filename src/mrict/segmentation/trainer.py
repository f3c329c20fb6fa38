"""U-Net training: iteration-based, augmented on the fly, selected on the validation split.

A run folder holds ``config.yaml``, ``model.{safetensors,json}`` (the selected weights),
``history.csv`` (training loss and validation Dice) and ``loss_curve.png``; while training,
``checkpoint.{safetensors,json}`` holds everything needed to resume exactly.

Inputs go through :func:`mrict.segmentation.inputs.prepare_inputs` (HU windows for CT) for
training and validation alike. Extra (e.g. translated) training sets are drawn as
``SegConfig.schedule`` says; with ``"mixed"`` the target slices of every batch are drawn by
the same seeded stream as in a run without extra data (:class:`IndexStream`), so at every
step a mixed run has seen exactly the target slices the target-only run has seen.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrict.config import check_resumable, config_to_dict, save_config
from mrict.data.datasets import SliceSet
from mrict.errors import MrictError
from mrict.runtime.checkpoint import load_checkpoint, load_module_state, save_checkpoint
from mrict.runtime.device import autocast_context, pick_device, resolve_precision
from mrict.runtime.harness import TrainingLoop, damaged_checkpoint_errors
from mrict.runtime.seed import rng_state, seed_everything
from mrict.segmentation.config import RESUMABLE_CHANGES, SegConfig
from mrict.segmentation.inputs import input_channels, prepare_inputs
from mrict.segmentation.losses import DiceBCELoss
from mrict.segmentation.metrics import evaluate_masks
from mrict.segmentation.model import build_unet
from mrict.segmentation.run_folder import (
    CHECKPOINT,
    check_run_folder,
    data_fingerprint,
    load_init,
)
from mrict.segmentation.sampling import (
    IndexStream,
    SliceItems,
    batch_composition,
    concat_slice_sets,
)
from mrict.segmentation.selection import RunData, Selection, model_meta, write_model

CHECKPOINT_KIND = "mrict-segmenter-checkpoint"


def check_seg_config(config: SegConfig) -> None:
    """One-line :class:`MrictError` for option values no run can use."""
    if config.iterations < 1 or config.val_every < 1 or config.batch_size < 1:
        raise MrictError("iterations, val_every and batch_size must be >= 1")
    if config.checkpoint_every < 0:
        raise MrictError(f"checkpoint_every must be >= 0, got {config.checkpoint_every}")
    if config.patience < 0 or config.min_iterations < 0 or config.min_delta < 0:
        raise MrictError("patience, min_iterations and min_delta must be >= 0")
    if not 0.0 < config.real_fraction < 1.0:
        raise MrictError(f"real_fraction must be in (0, 1), got {config.real_fraction}")
    if not 0.5 < config.pseudo_confidence < 1.0:
        raise MrictError(f"pseudo_confidence must be in (0.5, 1), got {config.pseudo_confidence}")
    if config.pseudo_max_uncertain < 0.0:
        raise MrictError(f"pseudo_max_uncertain must be >= 0, got {config.pseudo_max_uncertain}")


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, images: np.ndarray, device: torch.device, precision: str, batch: int
) -> np.ndarray:
    """(N, C, H, W) prepared inputs (or (N, H, W), one channel) -> (N, H, W) float32 logits."""
    model.eval()
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[:, None]
    out = np.empty((images.shape[0], *images.shape[2:]), np.float32)
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch])).to(device)
        with autocast_context(device, precision):
            y = model(x)
        out[i : i + batch] = y[:, 0].float().cpu().numpy()
    return out


def validation_dice(
    model: torch.nn.Module,
    val: SliceSet,
    device: torch.device,
    precision: str,
    cfg: SegConfig,
    inputs: np.ndarray | None = None,
) -> float:
    """Mean per-patient Dice on ``val`` (patients with nothing to find and nothing found
    are left out); nan when nothing is scorable. ``inputs``: ``val``'s prepared inputs
    (computed with :func:`prepare_inputs` when not given)."""
    x = inputs if inputs is not None else prepare_inputs(val.images, val.modality, cfg)
    logits = predict_logits(model, x, device, precision, max(cfg.batch_size, 16))
    pred = logits > math.log(cfg.threshold / (1.0 - cfg.threshold))
    return float(
        evaluate_masks(pred, val.masks, val.patient_ids, with_hd95=False)["summary"]["patient_dice"]
    )


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
    """One optimisation step on inputs ``x`` (B, C, H, W) in [-1, 1] and masks ``y``
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


def _copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _as_sets(value: SliceSet | Sequence[SliceSet] | None) -> list[SliceSet]:
    if value is None:
        return []
    return [value] if isinstance(value, SliceSet) else list(value)


def _prepare_data(
    train: SliceSet | Sequence[SliceSet],
    extra: SliceSet | Sequence[SliceSet] | None,
    val: SliceSet | None,
    config: SegConfig,
) -> RunData:
    sets = [s.labelled() for s in _as_sets(train)]
    extra_sets = [s.labelled() for s in _as_sets(extra)]
    extra_sets = [s for s in extra_sets if len(s)]
    if extra_sets and config.schedule == "pretrain_finetune":
        raise MrictError(
            "schedule pretrain_finetune mixes no extra data: pre-train on it in a separate run "
            "and pass that run as init"
        )
    if config.schedule == "concat":
        sets, extra_sets = sets + extra_sets, []
    data = concat_slice_sets(sets)
    aux = concat_slice_sets(extra_sets) if extra_sets else None
    modalities = {s.modality for s in [*sets, *extra_sets] if len(s)}
    if len(modalities) > 1:
        raise MrictError(f"training sets mix modalities: {sorted(modalities)}")
    size = config.image_size
    for part in (data, aux):
        if part is not None and part.images.shape[1:] != (size, size):
            raise MrictError(
                f"training images are {part.images.shape[1]}x{part.images.shape[2]}, "
                f"config image_size is {size}"
            )
    val_set = val.labelled() if val is not None else None
    if val_set is not None and len(val_set) == 0:
        val_set = None
    modality = data.modality
    x = prepare_inputs(data.images, modality, config)
    x_aux = prepare_inputs(aux.images, modality, config) if aux is not None else None
    # validation slices are windowed as the model's modality (a CT model sees CT windows)
    x_val = prepare_inputs(val_set.images, modality, config) if val_set is not None else None
    fingerprint = data_fingerprint(data, x)
    if aux is not None:
        fingerprint += "+" + data_fingerprint(aux, x_aux)
    val_fingerprint = data_fingerprint(val_set, x_val) if val_set is not None else ""
    return RunData(
        data,
        x,
        aux,
        x_aux,
        val_set,
        x_val,
        input_channels(config, modality),
        fingerprint,
        val_fingerprint,
    )


def _open_checkpoint(
    out: Path, config: SegConfig, seed: int, d: RunData, init_digest: str
) -> dict[str, Any]:
    """The checkpoint's state after checking it belongs to this run (kind, config, seed,
    data and init weights)."""
    ckpt, meta = load_checkpoint(out / CHECKPOINT)
    if meta.get("kind") != CHECKPOINT_KIND:
        raise MrictError("not a segmentation training checkpoint", out / f"{CHECKPOINT}.json")
    check_resumable(meta.get("config", {}), config, RESUMABLE_CHANGES, out)
    if meta.get("seed") != seed:
        raise MrictError(
            f"cannot resume with a different seed ({seed}; the run used {meta.get('seed')})",
            out,
        )
    if (meta.get("data"), meta.get("val_data")) != (d.fingerprint, d.val_fingerprint):
        raise MrictError(
            "cannot resume with different training or validation data (data folder, "
            "--extra or --label-fraction changed)",
            out,
        )
    if meta.get("init", "") != init_digest:
        raise MrictError("cannot resume with different init weights", out)
    return ckpt


def _restore_rng(rng: dict[str, Any]) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(rng["cuda"]))


def train_segmenter(
    train: SliceSet | Sequence[SliceSet],
    val: SliceSet | None,
    out_dir: str | Path,
    config: SegConfig,
    seed: int = 0,
    *,
    extra: SliceSet | Sequence[SliceSet] | None = None,
    init: str | Path | None = None,
    progress: bool = True,
    title: str = "",
    resume: bool = False,
    resume_command: str | None = None,
    on_step: Callable[[int], None] | None = None,
) -> Path:
    """Train a U-Net on the labelled slices of ``train`` and return the run folder.

    ``extra``: further labelled sets (e.g. translated source images) combined with
    ``train`` as ``config.schedule`` says (see :class:`SegConfig`); all sets must be of one
    modality. ``init``: a finished segmentation run folder whose selected weights the
    U-Net starts from (same architecture and input windows), for fine-tuning.

    Training stops at ``config.iterations`` or, with ``config.patience``, after that many
    validations in a row without improvement (not before ``config.min_iterations``).
    Every ``config.val_every`` iterations the model is scored on ``val`` (mean per-patient
    Dice, labelled slices only); the best-scoring weights are saved (ties keep the earlier
    model). Without a usable validation set the final model is saved. Same seed -> same run.

    Every ``config.checkpoint_every`` iterations (and on SIGINT/SIGTERM, which then raise
    :class:`TrainingInterrupted` naming ``resume_command``) the whole training state goes
    to ``RUN/checkpoint.{safetensors,json}``; ``resume=True`` continues from it bit-exactly
    (same data, seed and config required). The checkpoint is removed once the model is
    written. A NaN/Inf loss term stops training (or skips the step, ``nonfinite="skip"``).
    ``on_step(iteration)`` is called after every completed step (after its checkpoint).

    ``model.json`` records the input windows (``input``, ``in_channels``), the selected
    and last iteration, and the exposure: ``target_draws`` / ``extra_draws`` (slices drawn
    from each part) and ``target_passes`` (target draws / target slices).
    """
    out = Path(out_dir)
    check_seg_config(config)
    d = _prepare_data(train, extra, val, config)
    has_ckpt = check_run_folder(out, resume)
    init_state, init_digest = None, ""
    if init is not None:
        init_state, init_digest = load_init(Path(init), config, d.data.modality, d.in_channels)
    ckpt = _open_checkpoint(out, config, seed, d, init_digest) if has_ckpt else None
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    run = _SegRun(out, config, seed, d, init_state, init_digest, ckpt)
    loop = TrainingLoop(
        total=config.iterations,
        start=run.start,
        checkpoint_every=config.checkpoint_every,
        save=run.save,
        checkpoint_json=out / f"{CHECKPOINT}.json",
        resume_command=resume_command or f"train_segmenter(..., {str(out)!r}, resume=True)",
        nonfinite=config.nonfinite,
        skipped=run.skipped,
        on_step=on_step,
        progress=progress,
        title=title or "segmenter",
        follow_threads=run.device.type == "cpu",
    )
    run.loop = loop
    last = loop.run(run.step)
    sel = run.sel
    if sel.state is None:  # validation never scorable: keep the final weights
        sel.state = _copy_state(run.model)
        sel.iteration = sel.history[-1]["iteration"] if sel.history else last
    streams = (run.stream, run.aux_stream)
    meta = model_meta(config, d, seed, init, sel, last, loop, *streams, run.batch)
    write_model(out, meta, sel, title)
    return out


class _SegRun:
    """One U-Net run: model, optimiser, schedule, seeded slice streams and selection state
    (restored from ``ckpt`` when resuming), and the step and checkpoint the loop calls."""

    def __init__(
        self,
        out: Path,
        config: SegConfig,
        seed: int,
        d: RunData,
        init_state: dict[str, torch.Tensor] | None,
        init_digest: str,
        ckpt: dict[str, Any] | None,
    ) -> None:
        self.out, self.config, self.seed = out, config, seed
        self.d, self.init_digest = d, init_digest
        seed_everything(seed)
        self.device = pick_device(config.device)
        self.precision = resolve_precision(self.device, config.precision)
        model = build_unet(config, d.in_channels)
        if init_state is not None:
            load_module_state(model, init_state, "unet")
        self.model = model.to(self.device)
        self.loss_fn = DiceBCELoss(config.lambda_dice, config.lambda_bce)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=config.iterations)
        self.batch = batch_composition(config, d.aux is not None)
        self.items = SliceItems(d.x, d.data.masks, config.augment, seed, 0)
        self.stream = IndexStream(len(d.data), seed)
        self.aux_items: SliceItems | None = None
        self.aux_stream: IndexStream | None = None
        if d.aux is not None and d.x_aux is not None:
            self.aux_items = SliceItems(d.x_aux, d.aux.masks, config.augment, seed, 1)
            aux_seed = int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
            self.aux_stream = IndexStream(len(d.aux), aux_seed)
        self.sel = Selection()
        self.start, self.skipped = 0, 0
        self.loop: TrainingLoop | None = None
        if ckpt is not None:
            with damaged_checkpoint_errors(out / f"{CHECKPOINT}.json"):
                self._restore(ckpt)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        load_module_state(self.model, ckpt["unet"], "unet")
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.stream.load(ckpt)
        if self.aux_stream is not None:
            self.aux_stream.load(ckpt["aux"])
        self.start = int(ckpt["iteration"])
        self.sel.load(ckpt)
        self.skipped = int(ckpt.get("skipped", 0))
        _restore_rng(ckpt["rng"])

    def save(self, iteration: int) -> None:
        """The whole training state after ``iteration`` -> ``RUN/checkpoint``."""
        assert self.loop is not None
        state = {
            "unet": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            **self.stream.state(),
            "aux": self.aux_stream.state() if self.aux_stream is not None else {},
            "iteration": iteration,
            **self.sel.state_dict(),
            "skipped": self.loop.guard.skipped,
            "rng": rng_state(),
        }
        meta = {
            "kind": CHECKPOINT_KIND,
            "iteration": iteration,
            "total_iterations": self.config.iterations,
            "seed": self.seed,
            "data": self.d.fingerprint,
            "val_data": self.d.val_fingerprint,
            "init": self.init_digest,
            "config": config_to_dict(self.config),
        }
        save_checkpoint(self.out / CHECKPOINT, state, meta)

    def step(self, it: int) -> bool:
        """One update, then (every ``val_every``) validation; False to stop early."""
        assert self.loop is not None
        config, d, loop = self.config, self.d, self.loop
        n_main, n_aux = self.batch
        batch = [self.items.get(i, e) for i, e in self.stream.take(n_main)]
        if self.aux_stream is not None and self.aux_items is not None:
            batch += [self.aux_items.get(i, e) for i, e in self.aux_stream.take(n_aux)]
        x = torch.stack([b[0] for b in batch]).to(self.device)
        y = torch.stack([b[1] for b in batch]).to(self.device)
        loss = train_step(
            self.model,
            self.loss_fn,
            self.opt,
            x,
            y,
            self.device,
            self.precision,
            lambda t: loop.finite(t, it),
        )
        self.sched.step()
        value = float(loss)
        if math.isfinite(value):
            self.sel.running.append(value)
        if it % config.val_every and it != config.iterations:
            return True
        score = (
            validation_dice(self.model, d.val, self.device, self.precision, config, d.x_val)
            if d.val is not None
            else math.nan
        )
        if self.sel.record(it, score, d.val is not None, self.opt.param_groups[0]["lr"], config):
            self.sel.state = _copy_state(self.model)
        loop.info(f"val Dice {score:.3f} (best {max(self.sel.best, 0):.3f})")
        return not (
            config.patience and self.sel.stale >= config.patience and it >= config.min_iterations
        )
