"""Model selection of a segmenter run (best validation Dice, early stopping) and the
files a finished run writes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrict.config import config_to_dict
from mrict.data.datasets import SliceSet
from mrict.runtime.checkpoint import save_checkpoint
from mrict.runtime.harness import TrainingLoop
from mrict.runtime.threads import threads_used
from mrict.segmentation.config import SegConfig
from mrict.segmentation.history import plot_history, write_history
from mrict.segmentation.inputs import describe_inputs
from mrict.segmentation.run_folder import CHECKPOINT, MODEL
from mrict.segmentation.sampling import IndexStream


@dataclass
class Selection:
    """What validation decided so far (saved in the checkpoint): the best Dice, its weights
    and step, the early-stopping count and reference, the history, the running losses."""

    best: float = -math.inf
    state: dict[str, torch.Tensor] | None = None
    iteration: int = 0
    stale: int = 0
    stop_ref: float = -math.inf
    history: list[dict[str, Any]] = field(default_factory=list)
    running: list[float] = field(default_factory=list)

    def record(self, it: int, score: float, scorable: bool, lr: float, config: SegConfig) -> bool:
        """Log a validation at step ``it``, keep the weights if they improved (the caller
        copies them when this returns True) and return whether they did."""
        self.history.append(
            {
                "iteration": it,
                "train_loss": float(np.mean(self.running)) if self.running else math.nan,
                "val_dice": score,
                "lr": lr,
            }
        )
        self.running = []
        improved = not scorable or (not math.isnan(score) and score > self.best)
        if improved:
            self.best = score if scorable else self.best
            self.iteration = it
        # early stopping counts validations that do not beat ``stop_ref`` (the best Dice
        # when the count last restarted) by more than min_delta
        if not scorable or (not math.isnan(score) and score > self.stop_ref + config.min_delta):
            self.stop_ref = score if scorable else self.stop_ref
            self.stale = 0
        else:
            self.stale += 1
        return improved

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "has_best": self.state is not None,
            "best_state": self.state or {},
            "best_iter": self.iteration,
            "stale": self.stale,
            "stop_ref": self.stop_ref,
            "history": self.history,
            "running": self.running,
        }

    def load(self, ckpt: dict[str, Any]) -> None:
        self.best = float(ckpt["best"])
        self.state = ckpt["best_state"] if ckpt["has_best"] else None
        self.iteration, self.stale = int(ckpt["best_iter"]), int(ckpt["stale"])
        self.stop_ref = float(ckpt.get("stop_ref", self.best))
        self.history = [dict(h) for h in ckpt["history"]]
        self.running = [float(v) for v in ckpt["running"]]


@dataclass
class RunData:
    """The prepared training data of a run: target slices (``data``, inputs ``x``), extra
    slices (``aux``, ``x_aux``), validation (``val``, ``x_val``) and their digests."""

    data: SliceSet
    x: np.ndarray
    aux: SliceSet | None
    x_aux: np.ndarray | None
    val: SliceSet | None
    x_val: np.ndarray | None
    in_channels: int
    fingerprint: str
    val_fingerprint: str


def model_meta(
    config: SegConfig,
    d: RunData,
    seed: int,
    init: str | Path | None,
    sel: Selection,
    last: int,
    loop: TrainingLoop,
    stream: IndexStream,
    aux_stream: IndexStream | None,
    batch: tuple[int, int],
) -> dict[str, Any]:
    """``model.json``: the config, inputs, selection, schedule and exposure of a run."""
    data, aux = d.data, d.aux
    return {
        "config": config_to_dict(config),
        "modality": data.modality,
        "in_channels": d.in_channels,
        "input": describe_inputs(config, data.modality),
        "seed": seed,
        "best_iteration": sel.iteration,
        "best_val_dice": None if not math.isfinite(sel.best) else sel.best,
        "last_iteration": last,
        "stopped_early": loop.stopped_early,
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
        "batch": {"target": batch[0], "extra": batch[1]},
        "target_draws": stream.draws,
        "extra_draws": aux_stream.draws if aux_stream is not None else 0,
        "target_passes": stream.passes,
        "val_patients": len(d.val.patients()) if d.val is not None else 0,
        "skipped_steps": loop.guard.skipped,
        "cpu_threads": torch.get_num_threads(),
        "cpu_threads_used": threads_used(),
    }


def write_model(out: Path, meta: dict[str, Any], sel: Selection, title: str) -> None:
    """The finished run's files; the checkpoint goes once the model is written."""
    write_history(sel.history, out / "history.csv")
    plot_history(sel.history, out / "loss_curve.png", title)
    save_checkpoint(out / MODEL, {"unet": sel.state}, meta)
    for suffix in (".json", ".safetensors", ".next.safetensors"):
        (out / f"{CHECKPOINT}{suffix}").unlink(missing_ok=True)
