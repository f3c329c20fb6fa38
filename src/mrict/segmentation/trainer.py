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
from mrict.data.datasets import SliceSet
from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_path, atomic_write_text
from mrict.runtime.checkpoint import load_checkpoint, load_module_state, save_checkpoint
from mrict.runtime.device import autocast_context, pick_device, resolve_precision
from mrict.runtime.interrupt import TrainingInterrupted, stop_on_signals
from mrict.runtime.numerics import LossGuard
from mrict.runtime.progress import progress_bar
from mrict.runtime.seed import rng_state, seed_everything
from mrict.segmentation.config import RESUMABLE_CHANGES, SegConfig
from mrict.segmentation.inputs import describe_inputs, input_channels, prepare_inputs
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


def batch_composition(config: SegConfig, has_extra: bool) -> tuple[int, int]:
    """Slices per batch ``(from the target set, from the extra sets)`` under the "mixed"
    schedule: ``batch_size`` target slices (as without extra data) plus
    ``max(1, round(batch_size * (1 - real_fraction) / real_fraction))`` extra ones."""
    if not has_extra:
        return config.batch_size, 0
    rf = config.real_fraction
    return config.batch_size, max(1, round(config.batch_size * (1.0 - rf) / rf))


class IndexStream:
    """Endless epoch-wise shuffled draws of ``0 .. n-1`` (each index once per epoch, a new
    order every epoch), from its own ``torch.Generator`` seeded with ``seed``.

    ``take(k)`` returns ``k`` ``(index, epoch)`` pairs; ``draws`` counts them. The state
    (:meth:`state` / :meth:`load`) makes it exactly resumable.
    """

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise MrictError("no training slices")
        self.n = int(n)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.epoch = 0
        self.order = torch.randperm(self.n, generator=self.gen)
        self.pos = 0
        self.draws = 0

    def take(self, k: int) -> list[tuple[int, int]]:
        out = []
        while len(out) < k:
            if self.pos >= self.n:
                self.epoch += 1
                self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
            out.append((int(self.order[self.pos]), self.epoch))
            self.pos += 1
        self.draws += k
        return out

    @property
    def passes(self) -> float:
        """Draws divided by the set size (passes over the set so far)."""
        return self.draws / self.n

    def state(self) -> dict[str, Any]:
        return {
            "generator": self.gen.get_state(),
            "order": self.order,
            "epoch": self.epoch,
            "pos": self.pos,
            "draws": self.draws,
        }

    def load(self, state: dict[str, Any]) -> None:
        order = state["order"]
        if len(order) != self.n:
            raise MrictError("checkpoint data order does not fit the training set")
        self.gen.set_state(state["generator"])
        self.order = order
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.draws = int(state.get("draws", 0))


class _Items:
    """(N, C, H, W) inputs and (N, H, W) masks; item ``i`` of epoch ``e`` is augmented with
    a draw that depends only on (seed, stream, epoch, i), so runs are reproducible."""

    def __init__(
        self, inputs: np.ndarray, masks: np.ndarray, augment: bool, seed: int, stream: int
    ) -> None:
        self.inputs, self.masks = inputs, masks
        self.seed, self.stream = seed, stream
        self._transform = None
        if augment:
            from mrict.data.augment import build_augment

            self._transform = build_augment()

    def get(self, i: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(self.inputs[i])
        mask = torch.from_numpy(self.masks[i].astype(np.float32))[None]
        if self._transform is not None:
            from mrict.data.augment import apply_augment

            key = (self.seed, epoch, i) if self.stream == 0 else (self.seed, self.stream, epoch, i)
            image, mask = apply_augment(self._transform, image, mask, key)
        return image, mask


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


def data_fingerprint(data: SliceSet, inputs: np.ndarray | None = None) -> str:
    """Short digest of the training slices (``inputs``, default the images; masks;
    patients): a resumed run must see exactly the data the interrupted one saw."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.ascontiguousarray(data.images if inputs is None else inputs).tobytes())
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
    if out.exists() and not out.is_dir():
        raise MrictError("output exists and is not a folder", out)
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


def _as_sets(value: SliceSet | Sequence[SliceSet] | None) -> list[SliceSet]:
    if value is None:
        return []
    return [value] if isinstance(value, SliceSet) else list(value)


def _load_init(
    init: Path, config: SegConfig, modality: str, in_channels: int
) -> tuple[dict[str, torch.Tensor], str]:
    """Weights of the trained segmenter in ``init`` (same architecture and inputs) and a
    digest of its weights file."""
    if not (init / f"{MODEL}.json").is_file():
        raise MrictError("init: no trained segmenter in this folder (model.json)", init)
    state, meta = load_checkpoint(init / MODEL)
    saved = meta.get("config", {})
    mine = config_to_dict(config)
    from mrict.segmentation.model import ARCH_KEYS

    differ = [k for k in ARCH_KEYS if k in saved and saved[k] != mine[k]]
    if int(meta.get("in_channels", 1)) != in_channels:
        differ.append("in_channels")
    if meta.get("input", describe_inputs(config, modality)) != describe_inputs(config, modality):
        differ.append("input windows")
    if differ:
        raise MrictError(f"init segmenter differs in {', '.join(differ)}", init)
    if "unet" not in state:
        raise MrictError("init checkpoint holds no U-Net weights", init)
    digest = hashlib.blake2b((init / f"{MODEL}.safetensors").read_bytes(), digest_size=16)
    return state["unet"], digest.hexdigest()


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
    in_channels = input_channels(config, modality)
    x_data = prepare_inputs(data.images, modality, config)
    x_aux = prepare_inputs(aux.images, modality, config) if aux is not None else None
    # validation slices are windowed as the model's modality (a CT model sees CT windows)
    x_val = prepare_inputs(val_set.images, modality, config) if val_set is not None else None
    guard = LossGuard(config.nonfinite)
    has_ckpt = check_run_folder(out, resume)
    fingerprint = data_fingerprint(data, x_data)
    if aux is not None:
        fingerprint += "+" + data_fingerprint(aux, x_aux)
    val_fingerprint = data_fingerprint(val_set, x_val) if val_set is not None else ""
    init_state, init_digest = None, ""
    if init is not None:
        init_state, init_digest = _load_init(Path(init), config, modality, in_channels)
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
        if meta.get("init", "") != init_digest:
            raise MrictError("cannot resume with different init weights", out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    seed_everything(seed)
    device = pick_device(config.device)
    precision = resolve_precision(device, config.precision)
    model = build_unet(config, in_channels)
    if init_state is not None:
        load_module_state(model, init_state, "unet")
    model = model.to(device)
    loss_fn = DiceBCELoss(config.lambda_dice, config.lambda_bce)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.iterations)
    n_main, n_aux = batch_composition(config, aux is not None)
    items = _Items(x_data, data.masks, config.augment, seed, 0)
    stream = IndexStream(len(data), seed)
    aux_items = _Items(x_aux, aux.masks, config.augment, seed, 1) if aux is not None else None
    aux_seed = int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
    aux_stream = IndexStream(len(aux), aux_seed) if aux is not None else None
    best = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    best_iter = 0
    stale = 0
    stop_ref = -math.inf
    history: list[dict[str, Any]] = []
    running: list[float] = []
    start = 0
    if ckpt is not None:
        try:
            load_module_state(model, ckpt["unet"], "unet")
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            stream.load(ckpt)
            if aux_stream is not None:
                aux_stream.load(ckpt["aux"])
            start = int(ckpt["iteration"])
            best = float(ckpt["best"])
            best_state = ckpt["best_state"] if ckpt["has_best"] else None
            best_iter, stale = int(ckpt["best_iter"]), int(ckpt["stale"])
            stop_ref = float(ckpt.get("stop_ref", best))
            history = [dict(h) for h in ckpt["history"]]
            running = [float(v) for v in ckpt["running"]]
            guard.skipped = int(ckpt.get("skipped", 0))
            rng = ckpt["rng"]
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(list(rng["cuda"]))
        except MrictError as exc:
            if exc.path is None:
                raise MrictError(exc.message, ckpt_json) from exc
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
            **stream.state(),
            "aux": aux_stream.state() if aux_stream is not None else {},
            "iteration": iteration,
            "best": best,
            "has_best": best_state is not None,
            "best_state": best_state or {},
            "best_iter": best_iter,
            "stale": stale,
            "stop_ref": stop_ref,
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
            "init": init_digest,
            "config": config_to_dict(config),
        }
        save_checkpoint(out / CHECKPOINT, state, meta)
        guard.checkpoint = ckpt_json

    it = start
    stopped_early = False
    with stop_on_signals() as stop, progress_bar(progress, info=True) as bar:
        task = bar.add_task(title or "segmenter", total=config.iterations, info="")
        bar.update(task, completed=start)
        while it < config.iterations:
            it += 1
            batch = [items.get(i, e) for i, e in stream.take(n_main)]
            if aux_stream is not None and aux_items is not None:
                batch += [aux_items.get(i, e) for i, e in aux_stream.take(n_aux)]
            x = torch.stack([b[0] for b in batch]).to(device)
            y = torch.stack([b[1] for b in batch]).to(device)
            loss = train_step(
                model, loss_fn, opt, x, y, device, precision, lambda t, s=it: guard.check(t, s)
            )
            sched.step()
            value = float(loss)
            if math.isfinite(value):
                running.append(value)
            if it % config.val_every == 0 or it == config.iterations:
                score = (
                    validation_dice(model, val_set, device, precision, config, x_val)
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
                # early stopping counts validations that do not beat ``stop_ref`` (the
                # best Dice when the count last restarted) by more than min_delta
                if val_set is None or (
                    not math.isnan(score) and score > stop_ref + config.min_delta
                ):
                    stop_ref = score if val_set is not None else stop_ref
                    stale = 0
                else:
                    stale += 1
                bar.update(task, info=f"val Dice {score:.3f} (best {max(best, 0):.3f})")
                if config.patience and stale >= config.patience and it >= config.min_iterations:
                    stopped_early = it < config.iterations
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
        "modality": modality,
        "in_channels": in_channels,
        "input": describe_inputs(config, modality),
        "seed": seed,
        "best_iteration": best_iter,
        "best_val_dice": None if not math.isfinite(best) else best,
        "last_iteration": it,
        "stopped_early": stopped_early,
        "schedule": config.schedule
        if aux is not None
        else ("fine-tune from init" if init is not None else "single set"),
        "init": str(init) if init is not None else None,
        "train_slices": len(data) + (len(aux) if aux is not None else 0),
        "train_patients": len(
            set(data.patient_ids) | set(aux.patient_ids if aux is not None else [])
        ),
        "target_slices": len(data),
        "extra_slices": len(aux) if aux is not None else 0,
        "batch": {"target": n_main, "extra": n_aux},
        "target_draws": stream.draws,
        "extra_draws": aux_stream.draws if aux_stream is not None else 0,
        "target_passes": stream.passes,
        "val_patients": len(val_set.patients()) if val_set is not None else 0,
        "skipped_steps": guard.skipped,
        "cpu_threads": torch.get_num_threads(),
    }
    _write_history(history, out / "history.csv")
    plot_history(history, out / "loss_curve.png", title)
    save_checkpoint(out / MODEL, {"unet": best_state}, meta)
    for suffix in (".json", ".safetensors", ".next.safetensors"):
        (out / f"{CHECKPOINT}{suffix}").unlink(missing_ok=True)
    return out
