"""CycleGAN training: one process, one GPU, or several processes under ``torchrun`` (DDP).

Rank 0 alone logs (progress bar, CSV, TensorBoard, sample grids) and writes checkpoints.
The data order is a pure function of (seed, epoch) and every other random state (image
pools) is checkpointed, so ``resume=True`` continues exactly where a killed run stopped.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mrict.config import check_resumable, config_to_dict, save_config
from mrict.data.intensity import DEFAULT_CT_MAP, remap_ct
from mrict.errors import MrictError
from mrict.runtime import distributed as dist
from mrict.runtime.atomic import atomic_path, atomic_write_text
from mrict.runtime.checkpoint import load_checkpoint, load_module_state, save_checkpoint
from mrict.runtime.device import autocast_context, grad_scaler, pick_device, resolve_precision
from mrict.runtime.interrupt import TrainingInterrupted, any_rank, stop_on_signals
from mrict.runtime.numerics import LossGuard, nonfinite_terms
from mrict.runtime.seed import rng_state, seed_everything
from mrict.translation.config import RESUMABLE_CHANGES, GanConfig
from mrict.translation.data import UnpairedData, epoch_order, load_unpaired
from mrict.translation.lesion import (
    CycleSegmenters,
    lesion_appearance_loss,
    lesion_reference,
    masked_seg_loss,
)
from mrict.translation.losses import build_feature_loss, l1_loss, lsgan_loss, ssim_loss
from mrict.translation.networks import CycleGenerators, build_models
from mrict.translation.pool import ImagePool
from mrict.translation.selection import load_paired_validation, score_generators
from mrict.translation.translate import HISTOGRAMS

CHECKPOINT = "checkpoint"
GENERATORS = "generators"
LOSS_NAMES = (
    "G_total",
    "G_adv_mr2ct",
    "G_adv_ct2mr",
    "cycle_mr",
    "cycle_ct",
    "identity_mr",
    "identity_ct",
    "ssim_mr",
    "ssim_ct",
    "feature_mr2ct",
    "feature_ct2mr",
    "seg_mr2ct",
    "seg_ct2mr",
    "lesion_mr2ct",
    "lesion_ct2mr",
    "D_mr",
    "D_ct",
    "S_mr",
    "S_ct",
)
SELECTION_CSV = "selection.csv"


def _lr_factor(total: int, decay_fraction: float) -> Callable[[int], float]:
    decay = max(0, min(total, int(round(total * decay_fraction))))
    start = total - decay

    def factor(step: int) -> float:
        if step < start or decay == 0:
            return 1.0
        return max(0.0, 1.0 - (step - start + 1) / (decay + 1))

    return factor


def _set_requires_grad(flag: bool, *modules: nn.Module | None) -> None:
    for module in modules:
        if module is not None:
            for p in module.parameters():
                p.requires_grad_(flag)


def save_generators(
    gens: CycleGenerators,
    run_dir: Path,
    config: GanConfig,
    extra: dict[str, Any],
    state: dict[str, Any] | None = None,
    name: str = GENERATORS,
) -> Path:
    """Write RUN/<name>.safetensors + .json: both generators' weights (``state``, a
    CycleGenerators state dict, instead of the current ones when given), their architecture
    and image size (what :func:`mrict.translation.translate.load_generators` reads)."""
    meta = {
        "kind": "mrict-cyclegan-generators",
        "arch": dict(gens.mr2ct.arch),
        "image_size": config.image_size,
        "config": config_to_dict(config),
        "cpu_threads": torch.get_num_threads(),
        **extra,
    }
    full = state if state is not None else gens.state_dict()
    split = {
        key: {k[len(key) + 1 :]: v for k, v in full.items() if k.startswith(key + ".")}
        for key in ("mr2ct", "ct2mr")
    }
    return save_checkpoint(run_dir / name, split, meta)


class _Logger:
    """Rank-0 outputs: CSV of every loss term, TensorBoard scalars and images, progress bar."""

    def __init__(
        self, run_dir: Path, resume_iteration: int, total: int, enabled: bool, show_bar: bool
    ) -> None:
        self.enabled = enabled
        self.csv_path = run_dir / "losses.csv"
        self.header = ["iteration", "epoch", *LOSS_NAMES, "lr", "images_per_s"]
        self.rows: list[list[str]] = []
        self.writer = None
        self.bar = None
        if not enabled:
            return
        if self.csv_path.is_file():
            with self.csv_path.open(newline="") as fh:
                old = list(csv.reader(fh))
            self.rows = [r for r in old[1:] if r and int(r[0]) <= resume_iteration]
        # tensorboard is a declared dependency (torch.utils.tensorboard needs it)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_iteration + 1)
        from mrict.runtime.progress import progress_bar

        self.bar = progress_bar(
            show_bar, "[bold]train-gan", info=True, elapsed=True, transient=False
        )
        self.bar.start()
        self.task = self.bar.add_task("train", total=total, completed=resume_iteration, info="")

    def step(
        self, iteration: int, epoch: int, losses: dict[str, float], lr: float, ips: float, log: bool
    ) -> None:
        if not self.enabled:
            return
        info = (
            f"G {losses['G_total']:.3f} D {losses['D_mr'] + losses['D_ct']:.3f} "
            f"cyc {losses['cycle_mr'] + losses['cycle_ct']:.3f} "
            f"seg {losses['seg_mr2ct'] + losses['seg_ct2mr']:.3f} {ips:.1f} img/s"
        )
        self.bar.update(self.task, completed=iteration, info=info)
        if not log:
            return
        row = [
            str(iteration),
            str(epoch),
            *(f"{losses[k]:.6g}" for k in LOSS_NAMES),
            f"{lr:.6g}",
            f"{ips:.3f}",
        ]
        self.rows.append(row)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(self.header)
        w.writerows(self.rows)
        atomic_write_text(self.csv_path, buf.getvalue())
        if self.writer is not None:
            for k in LOSS_NAMES:
                self.writer.add_scalar(f"loss/{k}", losses[k], iteration)
            self.writer.add_scalar("lr", lr, iteration)
            self.writer.add_scalar("images_per_s", ips, iteration)

    def image(self, grid: np.ndarray, iteration: int) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_image("samples", grid[None], iteration, dataformats="CHW")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        if self.writer is not None:
            self.writer.close()


@torch.no_grad()
def sample_grid(gens: CycleGenerators, mr: torch.Tensor, ct: torch.Tensor) -> np.ndarray:
    """uint8 (rows * H, 6 * W) grid: per row MRI, MRI->CT, cycle, CT, CT->MRI, cycle."""
    fake_ct = gens.mr2ct(mr)
    rec_mr = gens.ct2mr(fake_ct)
    fake_mr = gens.ct2mr(ct)
    rec_ct = gens.mr2ct(fake_mr)
    cols = [mr, fake_ct, rec_mr, ct, fake_mr, rec_ct]
    tiles = torch.cat(
        [torch.cat([c[i, 0].float() for c in cols], dim=1) for i in range(len(mr))], dim=0
    )
    return ((tiles.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def _write_png(path: Path, grid: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")


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
    data: UnpairedData = load_unpaired(data_root, cfg.image_size, cfg.split_seed, progress and main)
    quantiles = data.quantiles()  # in the default CT map: what the histogram baseline reads
    if cfg.ct_map != DEFAULT_CT_MAP:
        data.ct = remap_ct(data.ct, DEFAULT_CT_MAP, cfg.ct_map)
    n_mr, n_ct = len(data.mr), len(data.ct)
    world, rank, bsz = info.world_size, info.rank, cfg.batch_size
    per_step = bsz * world
    steps_per_epoch = max(1, math.ceil(max(n_mr, n_ct) / per_step))
    total = cfg.iterations if cfg.iterations > 0 else cfg.epochs * steps_per_epoch
    if total <= 0:
        raise MrictError("set iterations or epochs to a positive number")

    seed_everything(cfg.seed)
    gens, discs = build_models(cfg.ngf, cfg.n_blocks, cfg.ndf, cfg.n_layers_d, cfg.upsample)
    gens.to(device)
    discs.to(device)
    # tumour-aware terms: only where some train slices carry a mask
    has_masks = bool(data.mr_labelled.any() or data.ct_labelled.any())
    segs = (
        CycleSegmenters(cfg.seg_channels).to(device) if has_masks and cfg.lambda_seg > 0 else None
    )
    refs = {"mr": None, "ct": None}
    if has_masks and cfg.use_target_masks and cfg.lambda_lesion > 0:
        refs = {
            "mr": lesion_reference(data.mr, data.mr_masks, data.mr_labelled),
            "ct": lesion_reference(data.ct, data.ct_masks, data.ct_labelled),
        }
    if cfg.channels_last:
        gens.to(memory_format=torch.channels_last)
        discs.to(memory_format=torch.channels_last)
    feature = build_feature_loss(
        cfg.feature_loss, cfg.feature_weights, cfg.feature_weights_allow_pickle
    )
    if feature is not None:
        feature.to(device)
    # fused Adam: one kernel over all parameters instead of a loop of small ops
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    opt_g = torch.optim.Adam(gens.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **fused)
    opt_d = torch.optim.Adam(discs.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **fused)
    opt_s = (
        torch.optim.Adam(segs.parameters(), lr=cfg.seg_lr, **fused) if segs is not None else None
    )
    factor = _lr_factor(total, cfg.decay_fraction)
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, factor)
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, factor)
    scaler_g, scaler_d = grad_scaler(device, precision), grad_scaler(device, precision)
    pools = {
        "mr": ImagePool(cfg.pool_size, seed=cfg.seed * 7919 + 2 * rank),
        "ct": ImagePool(cfg.pool_size, seed=cfg.seed * 7919 + 2 * rank + 1),
    }
    iteration = 0
    val = (
        load_paired_validation(data_root, cfg.image_size, quantiles, cfg.ct_map)
        if cfg.select_every > 0
        else None
    )
    best: dict[str, Any] = {"score": math.inf, "iteration": 0, "state": None, "history": []}
    if ckpt is not None:
        load_module_state(gens, ckpt["generators"], "generators")
        load_module_state(discs, ckpt["discriminators"], "discriminators")
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
        sched_g.load_state_dict(ckpt["sched_g"])
        sched_d.load_state_dict(ckpt["sched_d"])
        if ckpt.get("scaler_g"):
            scaler_g.load_state_dict(ckpt["scaler_g"])
            scaler_d.load_state_dict(ckpt["scaler_d"])
        saved_pools = ckpt["pools"]
        if len(saved_pools) == world:
            for k in pools:
                pools[k].load_state_dict(saved_pools[rank][k])
        if segs is not None and opt_s is not None and ckpt.get("segmenters"):
            load_module_state(segs, ckpt["segmenters"], "segmenters")
            opt_s.load_state_dict(ckpt["opt_s"])
        saved_best = ckpt.get("selection") or {}
        if saved_best.get("history"):
            best = {
                "score": float(saved_best["score"]),
                "iteration": int(saved_best["iteration"]),
                "state": ckpt.get("best_generators") or None,
                "history": [dict(h) for h in saved_best["history"]],
            }
        iteration = int(ckpt["iteration"])
        torch.set_rng_state(ckpt["rng"]["torch"])
    if cfg.compile:
        for m in (gens.mr2ct, gens.ct2mr, discs.d_mr, discs.d_ct):
            m.compile()
    gens_raw, discs_raw, segs_raw = gens, discs, segs
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        gens = nn.parallel.DistributedDataParallel(gens_raw, device_ids=ids)
        discs = nn.parallel.DistributedDataParallel(discs_raw, device_ids=ids)
        if segs_raw is not None:
            segs = nn.parallel.DistributedDataParallel(segs_raw, device_ids=ids)

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        atomic_write_text(run_dir / HISTOGRAMS, json.dumps(quantiles))
    logger = _Logger(run_dir, iteration, total, enabled=main, show_bar=progress)
    pick = torch.linspace(0, 1, cfg.sample_count)
    sample_mr = data.mr[(pick * (n_mr - 1)).round().long()].to(device)
    sample_ct = data.ct[(pick * (n_ct - 1)).round().long()].to(device)
    identity = cfg.lambda_identity > 0
    ac = lambda: autocast_context(device, precision)  # noqa: E731
    no_ac = lambda: torch.autocast(device.type, enabled=False)  # noqa: E731

    def checkpoint() -> None:
        pool_states = [{k: p.state_dict() for k, p in pools.items()}]
        if info.enabled:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, pool_states[0])
            pool_states = gathered
        if main:
            state = {
                "generators": gens_raw.state_dict(),
                "discriminators": discs_raw.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "sched_g": sched_g.state_dict(),
                "sched_d": sched_d.state_dict(),
                "scaler_g": scaler_g.state_dict(),
                "scaler_d": scaler_d.state_dict(),
                "pools": pool_states,
                "iteration": iteration,
                "rng": rng_state(),
                "segmenters": segs_raw.state_dict() if segs_raw is not None else {},
                "opt_s": opt_s.state_dict() if opt_s is not None else {},
                "selection": {k: v for k, v in best.items() if k != "state"},
                "best_generators": best["state"] or {},
            }
            meta = {
                "iteration": iteration,
                "epoch": iteration // steps_per_epoch,
                "total_iterations": total,
                "world_size": world,
                "config": config_to_dict(cfg),
            }
            save_checkpoint(run_dir / CHECKPOINT, state, meta)
        dist.barrier()

    order_epoch = -1
    orders: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    t_last, n_last = time.perf_counter(), 0
    ckpt_json = run_dir / f"{CHECKPOINT}.json"
    guard = LossGuard(cfg.nonfinite, checkpoint=ckpt_json)

    def finite(terms: dict[str, torch.Tensor], step: int) -> bool:
        """True to take the step; False to skip it (policy "skip"); raises to stop. Every
        rank takes the same decision."""
        bad_here = bool(nonfinite_terms(terms))
        if not any_rank(bad_here):
            return True
        if bad_here:
            return guard.check(terms, step)
        if cfg.nonfinite == "stop":
            raise MrictError(
                f"a loss term is not finite on another process at step {step}; stopping", ckpt_json
            )
        return False

    stop_ctx = stop_on_signals(quiet=not main)
    stop = stop_ctx.__enter__()
    try:
        while iteration < total:
            epoch, pos = divmod(iteration, steps_per_epoch)
            if epoch != order_epoch:
                orders = epoch_order(cfg.seed, epoch, n_mr, n_ct, steps_per_epoch * per_step)
                order_epoch = epoch
            assert orders is not None
            lo = pos * per_step + rank * bsz
            sl = slice(lo, lo + bsz)
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
            mask_mr, mask_ct = mask_mr.to(device), mask_ct.to(device)
            lab_mr, lab_ct = data.mr_labelled[i_mr].to(device), data.ct_labelled[i_ct].to(device)
            if cfg.channels_last:
                real_mr = real_mr.contiguous(memory_format=torch.channels_last)
                real_ct = real_ct.contiguous(memory_format=torch.channels_last)

            # generators
            _set_requires_grad(False, discs_raw, segs_raw)
            with ac():
                out = gens(real_mr, real_ct, identity)
                score_mr, score_ct = discs_raw(out["fake_mr"], out["fake_ct"])
                if segs_raw is not None:
                    seg_fake_mr, seg_fake_ct = segs_raw(out["fake_mr"], out["fake_ct"])
            with no_ac():
                losses_t = {
                    "G_adv_mr2ct": cfg.lambda_adv * lsgan_loss(score_ct, True),
                    "G_adv_ct2mr": cfg.lambda_adv * lsgan_loss(score_mr, True),
                    "cycle_mr": cfg.lambda_cycle * l1_loss(out["rec_mr"], real_mr),
                    "cycle_ct": cfg.lambda_cycle * l1_loss(out["rec_ct"], real_ct),
                }
                w_id = cfg.lambda_identity * cfg.lambda_cycle
                if identity:
                    losses_t["identity_mr"] = w_id * l1_loss(out["idt_mr"], real_mr)
                    losses_t["identity_ct"] = w_id * l1_loss(out["idt_ct"], real_ct)
                if cfg.lambda_ssim > 0:
                    losses_t["ssim_mr"] = cfg.lambda_ssim * ssim_loss(out["rec_mr"], real_mr)
                    losses_t["ssim_ct"] = cfg.lambda_ssim * ssim_loss(out["rec_ct"], real_ct)
                if feature is not None and cfg.lambda_feature > 0:
                    losses_t["feature_mr2ct"] = cfg.lambda_feature * feature(
                        real_mr, out["fake_ct"]
                    )
                    losses_t["feature_ct2mr"] = cfg.lambda_feature * feature(
                        real_ct, out["fake_mr"]
                    )
                if segs_raw is not None:
                    losses_t["seg_mr2ct"] = cfg.lambda_seg * masked_seg_loss(
                        seg_fake_ct, mask_mr, lab_mr
                    )
                    losses_t["seg_ct2mr"] = cfg.lambda_seg * masked_seg_loss(
                        seg_fake_mr, mask_ct, lab_ct
                    )
                if refs["ct"] is not None:
                    losses_t["lesion_mr2ct"] = cfg.lambda_lesion * lesion_appearance_loss(
                        out["fake_ct"], mask_mr, lab_mr, refs["ct"]
                    )
                if refs["mr"] is not None:
                    losses_t["lesion_ct2mr"] = cfg.lambda_lesion * lesion_appearance_loss(
                        out["fake_mr"], mask_ct, lab_ct, refs["mr"]
                    )
                loss_g = sum(losses_t.values())
            if not finite(losses_t, iteration + 1):
                iteration += 1
                sched_g.step()
                sched_d.step()
                _set_requires_grad(True, discs_raw, segs_raw)
                continue
            opt_g.zero_grad(set_to_none=True)
            scaler_g.scale(loss_g).backward()
            scaler_g.step(opt_g)
            scaler_g.update()
            _set_requires_grad(True, discs_raw, segs_raw)

            # discriminators, on real images and pooled fakes in one forward
            fake_mr = pools["mr"].query(out["fake_mr"].float())
            fake_ct = pools["ct"].query(out["fake_ct"].float())
            with ac():
                s_mr, s_ct = discs(torch.cat([real_mr, fake_mr]), torch.cat([real_ct, fake_ct]))
            with no_ac():
                n = real_mr.shape[0]
                d_mr = 0.5 * (lsgan_loss(s_mr[:n], True) + lsgan_loss(s_mr[n:], False))
                d_ct = 0.5 * (lsgan_loss(s_ct[:n], True) + lsgan_loss(s_ct[n:], False))
                loss_d = d_mr + d_ct
            if finite({"D_mr": d_mr, "D_ct": d_ct}, iteration + 1):
                opt_d.zero_grad(set_to_none=True)
                scaler_d.scale(loss_d).backward()
                scaler_d.step(opt_d)
                scaler_d.update()
            s_terms: dict[str, torch.Tensor] = {}
            if segs is not None and opt_s is not None:
                s_terms = _segmenter_step(
                    segs,
                    opt_s,
                    out,
                    (real_mr, real_ct),
                    (mask_mr, mask_ct),
                    (lab_mr, lab_ct),
                    cfg.use_target_masks,
                    ac,
                    no_ac,
                    lambda t, s=iteration + 1: finite(t, s),
                )
            lr = opt_g.param_groups[0]["lr"]
            sched_g.step()
            sched_d.step()
            iteration += 1
            n_last += per_step

            if main:
                values = {k: 0.0 for k in LOSS_NAMES}
                values.update({k: float(v.detach()) for k, v in losses_t.items()})
                values["G_total"] = float(loss_g.detach())
                values["D_mr"], values["D_ct"] = float(d_mr.detach()), float(d_ct.detach())
                values.update({k: float(v.detach()) for k, v in s_terms.items()})
                now = time.perf_counter()
                ips = n_last / max(now - t_last, 1e-9)
                log = iteration % max(1, cfg.log_every) == 0 or iteration == total
                logger.step(iteration, epoch, values, lr, ips, log)
                if log:
                    t_last, n_last = now, 0
            end_of_epoch = iteration % steps_per_epoch == 0 or iteration == total
            if end_of_epoch and main:
                grid = sample_grid(gens_raw, sample_mr, sample_ct)
                done_epochs = math.ceil(iteration / steps_per_epoch)
                _write_png(run_dir / f"samples_epoch_{done_epochs:03d}.png", grid)
                logger.image(grid, iteration)
            if val is not None and (iteration % cfg.select_every == 0 or iteration == total):
                _select(best, gens_raw, val, iteration, run_dir if main else None)
            if (
                cfg.checkpoint_every > 0
                and iteration % cfg.checkpoint_every == 0
                and iteration < total
            ):
                checkpoint()
            if on_step is not None:
                on_step(iteration)
            if iteration < total and any_rank(bool(stop)):
                checkpoint()
                raise TrainingInterrupted(
                    iteration, ckpt_json, f"mrict train-gan {data_root} --out {run_dir} --resume"
                )
        checkpoint()
        _check_in_sync(gens_raw, info)
        if main:
            extra = {
                "iterations": iteration,
                "world_size": world,
                "data_root": str(Path(data_root).resolve()),
                "train_patients": {"MR": data.mr_patients, "CT": data.ct_patients},
                "histograms": quantiles,
                "tumour_aware": {
                    "segmentation_consistency": segs_raw is not None,
                    "target_masks": bool(
                        cfg.use_target_masks
                        and (segs_raw is not None or any(v is not None for v in refs.values()))
                    ),
                    "lesion_reference": {k: v.as_dict() if v else None for k, v in refs.items()},
                },
            }
            selection = {
                "on": "paired_val" if val is not None else None,
                "iteration": best["iteration"] if best["state"] is not None else iteration,
                "score": best["score"] if best["state"] is not None else None,
                "history": best["history"],
            }
            save_generators(
                gens_raw, run_dir, cfg, {**extra, "selection": selection}, state=best["state"]
            )
            if best["state"] is not None:
                save_generators(
                    gens_raw,
                    run_dir,
                    cfg,
                    {**extra, "selection": {"on": None}},
                    name="generators_final",
                )
        dist.barrier()
    finally:
        stop_ctx.__exit__(None, None, None)
        logger.close()
    return run_dir


def _segmenter_step(
    segs: nn.Module,
    opt: torch.optim.Optimizer,
    out: dict[str, torch.Tensor],
    real: tuple[torch.Tensor, torch.Tensor],
    masks: tuple[torch.Tensor, torch.Tensor],
    labelled: tuple[torch.Tensor, torch.Tensor],
    use_target_masks: bool,
    ac: Callable[[], Any],
    no_ac: Callable[[], Any],
    finite: Callable[[dict[str, torch.Tensor]], bool],
) -> dict[str, torch.Tensor]:
    """One update of the jointly trained segmenters: the MR segmenter learns CT->MR
    translations with the CT masks, the CT segmenter MR->CT translations with the MR masks;
    with ``use_target_masks`` each also learns the real slices of its modality with theirs.
    Returns the loss terms ``S_mr`` and ``S_ct``."""
    (real_mr, real_ct), (mask_mr, mask_ct), (lab_mr, lab_ct) = real, masks, labelled
    in_mr, in_ct = out["fake_mr"].detach(), out["fake_ct"].detach()
    y_mr, y_ct, l_mr, l_ct = mask_ct, mask_mr, lab_ct, lab_mr
    if use_target_masks:
        in_mr, in_ct = torch.cat([in_mr, real_mr]), torch.cat([in_ct, real_ct])
        y_mr, y_ct = torch.cat([y_mr, mask_mr]), torch.cat([y_ct, mask_ct])
        l_mr, l_ct = torch.cat([l_mr, lab_mr]), torch.cat([l_ct, lab_ct])
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


def _select(
    best: dict[str, Any], gens: CycleGenerators, val: Any, iteration: int, run_dir: Path | None
) -> None:
    """Score the generators on the paired validation set; keep a copy of the best ones in
    ``best`` and (``run_dir`` given) rewrite RUN/selection.csv."""
    scores = score_generators(gens.mr2ct, gens.ct2mr, val)
    best["history"].append({"iteration": iteration, **scores})
    if math.isfinite(scores["score"]) and scores["score"] < best["score"]:
        best["score"], best["iteration"] = scores["score"], iteration
        best["state"] = {k: v.detach().cpu().clone() for k, v in gens.state_dict().items()}
    if run_dir is not None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(best["history"][0]))
        w.writeheader()
        w.writerows(best["history"])
        atomic_write_text(run_dir / SELECTION_CSV, buf.getvalue())


def _check_in_sync(gens: nn.Module, info: dist.DistInfo) -> None:
    """Under DDP, verify every rank holds the same generator weights (RuntimeError if not)."""
    if not info.enabled:
        return
    with torch.no_grad():
        vec = torch.cat([p.detach().float().reshape(-1) for p in gens.parameters()])
        stats = torch.stack([vec.sum(), (vec * vec).sum(), vec.abs().max()]).double().cpu()
    gathered: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, stats)
    for other in gathered[1:]:
        if not torch.allclose(gathered[0], other, rtol=0, atol=0):
            raise RuntimeError("DDP ranks diverged: generator weights differ between ranks")


__all__ = ["LOSS_NAMES", "sample_grid", "save_generators", "train_cyclegan"]
