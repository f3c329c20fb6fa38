"""CycleGAN training: one process, one GPU, or several processes under ``torchrun`` (DDP).

Rank 0 alone logs (progress bar, CSV, TensorBoard, sample grids) and writes checkpoints.
The data order is a pure function of (seed, epoch) and every other random state (image
pools) is checkpointed, so ``resume=True`` continues exactly where a killed run stopped.
The loop itself (checkpoints, signals, non-finite policy, progress) is
:class:`mrict.runtime.harness.TrainingLoop`; this module holds the CycleGAN's step.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mrict.config import check_resumable, config_to_dict, save_config
from mrict.data.intensity import DEFAULT_CT_MAP, remap_ct
from mrict.errors import MrictError
from mrict.runtime import distributed as dist
from mrict.runtime.atomic import atomic_write_text
from mrict.runtime.checkpoint import load_checkpoint, save_checkpoint
from mrict.runtime.device import autocast_context, pick_device, resolve_precision
from mrict.runtime.harness import TrainingLoop, damaged_checkpoint_errors
from mrict.runtime.interrupt import any_rank
from mrict.runtime.seed import seed_everything
from mrict.translation.config import RESUMABLE_CHANGES, GanConfig
from mrict.translation.data import epoch_order, load_unpaired
from mrict.translation.gan_step import (
    Batch,
    make_batch,
    segmenter_step,
    select,
    set_requires_grad,
)
from mrict.translation.lesion import (
    LesionReference,
    lesion_appearance_loss,
    lesion_distribution_loss,
    masked_seg_loss,
)
from mrict.translation.losses import l1_loss, lsgan_loss, ssim_loss
from mrict.translation.selection import load_paired_validation
from mrict.translation.train_log import LOSS_NAMES, TrainLog, sample_grid
from mrict.translation.train_state import (
    build_parts,
    check_in_sync,
    checkpoint_state,
    restore,
    save_generators,
    save_results,
)
from mrict.translation.translate import HISTOGRAMS

CHECKPOINT = "checkpoint"


def train_cyclegan(
    data_root: str | Path,
    out_dir: str | Path,
    config: GanConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> Path:
    """Train a CycleGAN (MR <-> CT) on the train split of ``data_root``; return the run folder.

    Writes ``RUN/config.yaml``, ``RUN/checkpoint.{safetensors,json}`` (every
    ``checkpoint_every`` iterations and at the end), ``RUN/generators.{safetensors,json}``,
    ``RUN/losses.csv``, ``RUN/tensorboard/`` and ``RUN/samples_epoch_NNN.png``.
    ``resume=True`` continues from ``RUN/checkpoint``. ``on_step(iteration)`` is called after
    every completed step (after any checkpoint of that step).
    """
    run_dir = Path(out_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise MrictError("output exists and is not a folder", run_dir)
    if config.image_size % 4 or config.image_size < 16:
        raise MrictError(f"image_size must be a multiple of 4 and >= 16, got {config.image_size}")
    if config.batch_size < 1:
        raise MrictError(f"batch_size must be >= 1, got {config.batch_size}")
    device = pick_device(config.device)
    started_group = dist.env_info().enabled and not dist.is_dist()
    info = dist.init_distributed(device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
    precision = resolve_precision(device, config.precision)
    main = info.is_main
    stem = run_dir / CHECKPOINT
    has_ckpt = (run_dir / f"{CHECKPOINT}.json").is_file()
    if resume and not has_ckpt:
        raise MrictError("nothing to resume: no checkpoint in this run folder", run_dir)
    if not resume and has_ckpt:
        raise MrictError(
            "run folder already holds a checkpoint; pass --resume or choose another --out", run_dir
        )
    ckpt_state: dict[str, Any] | None = None
    if resume:
        ckpt_state, meta = load_checkpoint(stem)
        check_resumable(meta["config"], config, RESUMABLE_CHANGES, run_dir)
    try:
        return _train(
            data_root, run_dir, config, device, precision, info, main, ckpt_state, progress, on_step
        )
    finally:
        if started_group:
            dist.cleanup()


def _train(
    data_root: str | Path,
    run_dir: Path,
    cfg: GanConfig,
    device: torch.device,
    precision: str,
    info: dist.DistInfo,
    main: bool,
    ckpt: dict[str, Any] | None,
    progress: bool,
    on_step: Callable[[int], None] | None,
) -> Path:
    run = _GanRun(data_root, run_dir, cfg, device, precision, info, ckpt, progress and main)
    loop = TrainingLoop(
        total=run.total,
        start=run.start,
        checkpoint_every=cfg.checkpoint_every,
        save=run.save,
        checkpoint_json=run.ckpt_json,
        resume_command=f"mrict train-gan {data_root} --out {run_dir} --resume",
        nonfinite=cfg.nonfinite,
        on_step=on_step,
        any_rank=any_rank,
        progress=progress and main,
        title="[bold]train-gan",
        persistent=True,
        quiet=not main,
        follow_threads=device.type == "cpu",
    )
    loop.guard.checkpoint = run.ckpt_json
    run.loop = loop
    try:
        last = loop.run(run.step)
        run.save(last)
        check_in_sync(run.parts.gens, info)
        if main:
            save_results(
                run.parts,
                run_dir,
                cfg,
                run.data,
                data_root,
                run.quantiles,
                last,
                info.world_size,
                run.val,
            )
        dist.barrier()
    finally:
        run.log.close()
    return run_dir


def generator_losses(
    cfg: GanConfig,
    b: Batch,
    out: dict[str, torch.Tensor],
    scores: tuple[torch.Tensor, torch.Tensor],
    seg_fake: tuple[torch.Tensor, torch.Tensor] | None,
    feature: nn.Module | None,
    refs: dict[str, LesionReference | None],
    identity: bool,
) -> dict[str, torch.Tensor]:
    """The weighted generator terms (fp32): adversarial, cycle, identity, SSIM, feature,
    segmentation consistency (``seg_fake``: the segmenters on the fakes, MR then CT) and
    lesion appearance."""
    score_mr, score_ct = scores
    terms = {
        "G_adv_mr2ct": cfg.lambda_adv * lsgan_loss(score_ct, True),
        "G_adv_ct2mr": cfg.lambda_adv * lsgan_loss(score_mr, True),
        "cycle_mr": cfg.lambda_cycle * l1_loss(out["rec_mr"], b.mr),
        "cycle_ct": cfg.lambda_cycle * l1_loss(out["rec_ct"], b.ct),
    }
    w_id = cfg.lambda_identity * cfg.lambda_cycle
    if identity:
        terms["identity_mr"] = w_id * l1_loss(out["idt_mr"], b.mr)
        terms["identity_ct"] = w_id * l1_loss(out["idt_ct"], b.ct)
    if cfg.lambda_ssim > 0:
        terms["ssim_mr"] = cfg.lambda_ssim * ssim_loss(out["rec_mr"], b.mr)
        terms["ssim_ct"] = cfg.lambda_ssim * ssim_loss(out["rec_ct"], b.ct)
    if feature is not None and cfg.lambda_feature > 0:
        terms["feature_mr2ct"] = cfg.lambda_feature * feature(b.mr, out["fake_ct"])
        terms["feature_ct2mr"] = cfg.lambda_feature * feature(b.ct, out["fake_mr"])
    if seg_fake is not None:
        seg_fake_mr, seg_fake_ct = seg_fake
        terms["seg_mr2ct"] = cfg.lambda_seg * masked_seg_loss(seg_fake_ct, b.mask_mr, b.lab_mr)
        terms["seg_ct2mr"] = cfg.lambda_seg * masked_seg_loss(seg_fake_mr, b.mask_ct, b.lab_ct)
    lesion = (
        lesion_distribution_loss if cfg.lesion_term == "distribution" else lesion_appearance_loss
    )
    if refs["ct"] is not None:
        terms["lesion_mr2ct"] = cfg.lambda_lesion * lesion(
            out["fake_ct"], b.mask_mr, b.lab_mr, refs["ct"]
        )
    if refs["mr"] is not None:
        terms["lesion_ct2mr"] = cfg.lambda_lesion * lesion(
            out["fake_mr"], b.mask_ct, b.lab_ct, refs["mr"]
        )
    return terms


class _GanRun:
    """One CycleGAN run on this rank: data, models (DDP-wrapped under ``torchrun``), the
    epoch order, logging, and the step and checkpoint the training loop calls."""

    def __init__(
        self,
        data_root: str | Path,
        run_dir: Path,
        cfg: GanConfig,
        device: torch.device,
        precision: str,
        info: dist.DistInfo,
        ckpt: dict[str, Any] | None,
        progress: bool,
    ) -> None:
        self.cfg, self.run_dir, self.device, self.info = cfg, run_dir, device, info
        self.main = info.is_main
        data = load_unpaired(data_root, cfg.image_size, cfg.split_seed, progress)
        self.quantiles = data.quantiles()  # in the default CT map: the histogram baseline's
        if cfg.ct_map != DEFAULT_CT_MAP:
            data.ct = remap_ct(data.ct, DEFAULT_CT_MAP, cfg.ct_map)
        self.data = data
        n_mr, n_ct = len(data.mr), len(data.ct)
        self.per_step = cfg.batch_size * info.world_size
        self.steps_per_epoch = max(1, math.ceil(max(n_mr, n_ct) / self.per_step))
        self.total = cfg.iterations if cfg.iterations > 0 else cfg.epochs * self.steps_per_epoch
        if self.total <= 0:
            raise MrictError("set iterations or epochs to a positive number")
        seed_everything(cfg.seed)
        self.parts = build_parts(cfg, data, device, precision, self.total, info.rank)
        self.val = (
            load_paired_validation(data_root, cfg.image_size, self.quantiles, cfg.ct_map)
            if cfg.select_every > 0
            else None
        )
        self.ckpt_json = run_dir / f"{CHECKPOINT}.json"
        self.start = 0
        if ckpt is not None:
            with damaged_checkpoint_errors(self.ckpt_json):
                self.start = restore(self.parts, ckpt, info.world_size, info.rank)
        parts = self.parts
        if cfg.compile:
            for m in (parts.gens.mr2ct, parts.gens.ct2mr, parts.discs.d_mr, parts.discs.d_ct):
                m.compile()
        self.gens, self.discs, self.segs = parts.gens, parts.discs, parts.segs
        if info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.gens = nn.parallel.DistributedDataParallel(parts.gens, device_ids=ids)
            self.discs = nn.parallel.DistributedDataParallel(parts.discs, device_ids=ids)
            if parts.segs is not None:
                self.segs = nn.parallel.DistributedDataParallel(parts.segs, device_ids=ids)
        if self.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
            atomic_write_text(run_dir / HISTOGRAMS, json.dumps(self.quantiles))
        self.log = TrainLog(run_dir, self.start, enabled=self.main)
        pick = torch.linspace(0, 1, cfg.sample_count)
        self.sample_mr = data.mr[(pick * (n_mr - 1)).round().long()].to(device)
        self.sample_ct = data.ct[(pick * (n_ct - 1)).round().long()].to(device)
        self.identity = cfg.lambda_identity > 0
        self.ac = lambda: autocast_context(device, precision)
        self.no_ac = lambda: torch.autocast(device.type, enabled=False)
        self.order_epoch, self.orders = -1, None
        self.speed_t, self.speed_n = time.perf_counter(), 0
        self.loop: TrainingLoop | None = None

    def save(self, iteration: int) -> None:
        """The checkpoint of ``iteration`` (collective: gathers every rank's image pools)."""
        pool_states = [{k: p.state_dict() for k, p in self.parts.pools.items()}]
        if self.info.enabled:
            gathered: list[Any] = [None] * self.info.world_size
            torch.distributed.all_gather_object(gathered, pool_states[0])
            pool_states = gathered
        if self.main:
            meta = {
                "iteration": iteration,
                "epoch": iteration // self.steps_per_epoch,
                "total_iterations": self.total,
                "world_size": self.info.world_size,
                "config": config_to_dict(self.cfg),
            }
            state = checkpoint_state(self.parts, iteration, pool_states)
            save_checkpoint(self.run_dir / CHECKPOINT, state, meta)
        dist.barrier()

    def _batch(self, iteration: int) -> tuple[int, Batch]:
        """The epoch of step ``iteration`` and this rank's slices for it."""
        cfg = self.cfg
        epoch, pos = divmod(iteration - 1, self.steps_per_epoch)
        if epoch != self.order_epoch:
            n_mr, n_ct = len(self.data.mr), len(self.data.ct)
            span = self.steps_per_epoch * self.per_step
            self.orders = epoch_order(cfg.seed, epoch, n_mr, n_ct, span)
            self.order_epoch = epoch
        assert self.orders is not None
        lo = pos * self.per_step + self.info.rank * cfg.batch_size
        return epoch, make_batch(
            self.data, self.orders, slice(lo, lo + cfg.batch_size), cfg, self.device
        )

    def step(self, iteration: int) -> bool:
        """One training step: generators, discriminators, joint segmenters, then logging,
        samples and checkpoint selection."""
        assert self.loop is not None
        cfg, parts, loop = self.cfg, self.parts, self.loop
        epoch, b = self._batch(iteration)
        # generators
        set_requires_grad(False, parts.discs, parts.segs)
        seg_fake = None
        with self.ac():
            out = self.gens(b.mr, b.ct, self.identity)
            scores = parts.discs(out["fake_mr"], out["fake_ct"])
            if parts.segs is not None:
                seg_fake = parts.segs(out["fake_mr"], out["fake_ct"])
        with self.no_ac():
            terms = generator_losses(
                cfg, b, out, scores, seg_fake, parts.feature, parts.refs, self.identity
            )
            loss_g = sum(terms.values())
        if not loop.finite(terms, iteration):
            parts.sched_g.step()
            parts.sched_d.step()
            set_requires_grad(True, parts.discs, parts.segs)
            return True
        parts.opt_g.zero_grad(set_to_none=True)
        parts.scaler_g.scale(loss_g).backward()
        parts.scaler_g.step(parts.opt_g)
        parts.scaler_g.update()
        set_requires_grad(True, parts.discs, parts.segs)
        d_terms = self._discriminator_step(out, b, iteration)
        s_terms: dict[str, torch.Tensor] = {}
        if self.segs is not None and parts.opt_s is not None:
            s_terms = segmenter_step(
                self.segs,
                parts.opt_s,
                out,
                b,
                cfg.use_target_masks,
                self.ac,
                self.no_ac,
                lambda t: loop.finite(t, iteration),
            )
        lr = parts.opt_g.param_groups[0]["lr"]
        parts.sched_g.step()
        parts.sched_d.step()
        self.speed_n += self.per_step
        if self.main:
            values = {k: 0.0 for k in LOSS_NAMES}
            values.update(
                {k: float(v.detach()) for k, v in {**terms, **d_terms, **s_terms}.items()}
            )
            values["G_total"] = float(loss_g.detach())
            self._report(iteration, epoch, values, lr)
        if self.val is not None and (iteration % cfg.select_every == 0 or iteration == self.total):
            select(parts.best, parts.gens, self.val, iteration, self.run_dir if self.main else None)
        return True

    def _discriminator_step(
        self, out: dict[str, torch.Tensor], b: Batch, iteration: int
    ) -> dict[str, torch.Tensor]:
        """Both discriminators on real images and pooled fakes in one forward."""
        parts = self.parts
        fake_mr = parts.pools["mr"].query(out["fake_mr"].float())
        fake_ct = parts.pools["ct"].query(out["fake_ct"].float())
        with self.ac():
            s_mr, s_ct = self.discs(torch.cat([b.mr, fake_mr]), torch.cat([b.ct, fake_ct]))
        with self.no_ac():
            n = b.mr.shape[0]
            d_mr = 0.5 * (lsgan_loss(s_mr[:n], True) + lsgan_loss(s_mr[n:], False))
            d_ct = 0.5 * (lsgan_loss(s_ct[:n], True) + lsgan_loss(s_ct[n:], False))
        assert self.loop is not None
        if self.loop.finite({"D_mr": d_mr, "D_ct": d_ct}, iteration):
            parts.opt_d.zero_grad(set_to_none=True)
            parts.scaler_d.scale(d_mr + d_ct).backward()
            parts.scaler_d.step(parts.opt_d)
            parts.scaler_d.update()
        return {"D_mr": d_mr, "D_ct": d_ct}

    def _report(self, iteration: int, epoch: int, values: dict[str, float], lr: float) -> None:
        """Rank 0: progress text, the CSV/TensorBoard row and, at an epoch's end, samples."""
        assert self.loop is not None
        now = time.perf_counter()
        ips = self.speed_n / max(now - self.speed_t, 1e-9)
        self.loop.info(TrainLog.summary(values, ips))
        if iteration % max(1, self.cfg.log_every) == 0 or iteration == self.total:
            self.log.step(iteration, epoch, values, lr, ips)
            self.speed_t, self.speed_n = now, 0
        if iteration % self.steps_per_epoch == 0 or iteration == self.total:
            grid = sample_grid(self.parts.gens, self.sample_mr, self.sample_ct)
            done_epochs = math.ceil(iteration / self.steps_per_epoch)
            self.log.samples(self.run_dir / f"samples_epoch_{done_epochs:03d}.png", grid, iteration)


__all__ = ["LOSS_NAMES", "sample_grid", "save_generators", "train_cyclegan"]
