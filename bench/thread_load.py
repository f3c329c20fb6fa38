"""Child process of ``bench/threads.py``: one trainer running for a fixed time.

``python -m bench.thread_load KIND THREADS SECONDS OUT_JSON [DATA]``: KIND ``seg`` (the
quick U-Net step, batch 8 at 96 px, fp32) or ``gan`` (``train_cyclegan`` with the quick
preset on DATA); THREADS ``default`` (PyTorch's own choice), ``auto`` (mrict's thread
policy, :mod:`mrict.runtime.threads`, followed after every step as the trainers do) or a
number. After a warm-up it writes
``OUT_JSON.ready``, trains for SECONDS (SECONDS <= 0: until ``OUT_JSON.stop`` exists) and
writes the monotonic clock time of every step's end (comparable between processes) to
OUT_JSON.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path


class _Done(Exception):
    pass


def _finished(out: Path, end: float) -> bool:
    return Path(f"{out}.stop").exists() if end <= 0 else time.monotonic() >= end


def _threads(mode: str) -> dict:
    import torch

    from mrict.runtime.threads import apply_thread_plan, plan_threads

    if mode == "default":
        return {"threads": torch.get_num_threads(), "source": "torch default"}
    plan = apply_thread_plan(plan_threads(None if mode == "auto" else mode))
    return {"threads": plan.threads, "source": plan.source, "busy": plan.busy_cpus}


def _used(info: dict) -> dict:
    from mrict.runtime.threads import threads_used

    return {**info, "used": threads_used() if info["source"] != "torch default" else []}


def _seg(seconds: float, out: Path) -> tuple[list[float], int]:
    import torch

    from mrict.config import resolve_config
    from mrict.runtime.threads import follow_load
    from mrict.segmentation.config import SEG_PRESETS, SegConfig
    from mrict.segmentation.losses import DiceBCELoss
    from mrict.segmentation.model import build_unet
    from mrict.segmentation.trainer import train_step

    cfg = resolve_config(SegConfig, SEG_PRESETS, "quick", None, {})
    torch.manual_seed(0)
    model, loss = build_unet(cfg), DiceBCELoss(cfg.lambda_dice, cfg.lambda_bce)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    size, dev = cfg.image_size, torch.device("cpu")
    x = torch.rand(cfg.batch_size, 1, size, size) * 2 - 1
    y = (torch.rand(cfg.batch_size, 1, size, size) > 0.9).float()
    for _ in range(5):
        float(train_step(model, loss, opt, x, y, dev, "fp32"))
    Path(f"{out}.ready").write_text("")
    stamps: list[float] = []
    end = time.monotonic() + seconds if seconds > 0 else 0.0
    while not _finished(out, end):
        float(train_step(model, loss, opt, x, y, dev, "fp32"))
        stamps.append(time.monotonic())
        follow_load()  # as the trainer's loop does after every step
    return stamps, cfg.batch_size


def _gan(seconds: float, out: Path, data: str) -> tuple[list[float], int]:
    import dataclasses

    from mrict.config import resolve_config
    from mrict.translation.config import GAN_PRESETS, GanConfig
    from mrict.translation.trainer import train_cyclegan

    cfg = resolve_config(GanConfig, GAN_PRESETS, "quick", None, {})
    cfg = dataclasses.replace(cfg, iterations=100000, checkpoint_every=0, select_every=0)
    stamps: list[float] = []
    state = {"end": None}

    def on_step(it: int) -> None:
        now = time.monotonic()
        if it == 5:
            Path(f"{out}.ready").write_text("")
            state["end"] = now + seconds if seconds > 0 else 0.0
        elif it > 5:
            stamps.append(now)
            if _finished(out, state["end"]):
                raise _Done

    with tempfile.TemporaryDirectory(prefix="mrict-load-") as tmp, contextlib.suppress(_Done):
        train_cyclegan(data, tmp, cfg, progress=False, on_step=on_step)
    return stamps, cfg.batch_size * 2  # one MR and one CT batch per step


def main(argv: list[str]) -> None:
    kind, mode, seconds, out = argv[:4]
    info = _threads(mode)
    if kind == "seg":
        stamps, images = _seg(float(seconds), Path(out))
    else:
        stamps, images = _gan(float(seconds), Path(out), argv[4])
    Path(out).write_text(json.dumps({**_used(info), "stamps": stamps, "images_per_step": images}))


if __name__ == "__main__":
    main(sys.argv[1:])
