"""Everything a CycleGAN run trains and checkpoints: generators, discriminators, the joint
tumour segmenters, their optimisers, schedules, gradient scalers, image pools and the
checkpoint selection so far; built from the config, saved and restored exactly."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mrict.config import config_to_dict
from mrict.runtime import distributed as dist
from mrict.runtime.checkpoint import load_module_state, save_checkpoint
from mrict.runtime.device import grad_scaler
from mrict.runtime.seed import rng_state
from mrict.runtime.threads import threads_used
from mrict.translation.config import GanConfig
from mrict.translation.data import UnpairedData
from mrict.translation.lesion import CycleSegmenters, LesionReference, lesion_reference
from mrict.translation.losses import build_feature_loss
from mrict.translation.networks import CycleGenerators, build_models
from mrict.translation.pool import ImagePool

GENERATORS = "generators"


def lr_factor(total: int, decay_fraction: float) -> Callable[[int], float]:
    """Constant learning rate, then linear decay to 0 over the last ``decay_fraction``."""
    decay = max(0, min(total, int(round(total * decay_fraction))))
    start = total - decay

    def factor(step: int) -> float:
        if step < start or decay == 0:
            return 1.0
        return max(0.0, 1.0 - (step - start + 1) / (decay + 1))

    return factor


@dataclass
class GanParts:
    """The trained modules (unwrapped; DDP wrappers are made by the trainer), their
    optimisers (``opt_s`` / ``segs`` None without tumour-aware segmentation), schedules,
    scalers, image pools, lesion references and the best generators so far."""

    gens: CycleGenerators
    discs: nn.Module
    segs: CycleSegmenters | None
    feature: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    opt_s: torch.optim.Optimizer | None
    sched_g: torch.optim.lr_scheduler.LRScheduler
    sched_d: torch.optim.lr_scheduler.LRScheduler
    scaler_g: Any
    scaler_d: Any
    pools: dict[str, ImagePool]
    refs: dict[str, LesionReference | None]
    best: dict[str, Any] = field(
        default_factory=lambda: {"score": math.inf, "iteration": 0, "state": None, "history": []}
    )


def best_entry(best: dict[str, Any]) -> dict[str, Any] | None:
    """The selection history's row of the generators kept in ``best`` (None when none are
    kept yet)."""
    if best["state"] is None:
        return None
    return next((h for h in best["history"] if h["iteration"] == best["iteration"]), None)


def build_parts(
    cfg: GanConfig,
    data: UnpairedData,
    device: torch.device,
    precision: str,
    total: int,
    rank: int,
) -> GanParts:
    """Models and optimisers for ``total`` steps on ``rank`` (seed the RNGs first)."""
    gens, discs = build_models(
        cfg.ngf,
        cfg.n_blocks,
        cfg.ndf,
        cfg.n_layers_d,
        cfg.upsample,
        cfg.ct_map if cfg.d_bone_window else None,
    )
    gens.to(device)
    discs.to(device)
    # tumour-aware terms: only where some train slices carry a mask
    has_masks = bool(data.mr_labelled.any() or data.ct_labelled.any())
    segs = (
        CycleSegmenters(cfg.seg_channels).to(device) if has_masks and cfg.lambda_seg > 0 else None
    )
    refs: dict[str, LesionReference | None] = {"mr": None, "ct": None}
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
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(gens.parameters(), lr=cfg.lr, betas=betas, **fused)
    opt_d = torch.optim.Adam(discs.parameters(), lr=cfg.lr, betas=betas, **fused)
    opt_s = (
        torch.optim.Adam(segs.parameters(), lr=cfg.seg_lr, **fused) if segs is not None else None
    )
    factor = lr_factor(total, cfg.decay_fraction)
    return GanParts(
        gens=gens,
        discs=discs,
        segs=segs,
        feature=feature,
        opt_g=opt_g,
        opt_d=opt_d,
        opt_s=opt_s,
        sched_g=torch.optim.lr_scheduler.LambdaLR(opt_g, factor),
        sched_d=torch.optim.lr_scheduler.LambdaLR(opt_d, factor),
        scaler_g=grad_scaler(device, precision),
        scaler_d=grad_scaler(device, precision),
        pools={
            "mr": ImagePool(cfg.pool_size, seed=cfg.seed * 7919 + 2 * rank),
            "ct": ImagePool(cfg.pool_size, seed=cfg.seed * 7919 + 2 * rank + 1),
        },
        refs=refs,
    )


def restore(parts: GanParts, ckpt: dict[str, Any], world: int, rank: int) -> int:
    """Load a checkpoint's state into ``parts``; return its iteration. Image pools are
    restored when the checkpoint has one per rank of this world size."""
    load_module_state(parts.gens, ckpt["generators"], "generators")
    load_module_state(parts.discs, ckpt["discriminators"], "discriminators")
    parts.opt_g.load_state_dict(ckpt["opt_g"])
    parts.opt_d.load_state_dict(ckpt["opt_d"])
    parts.sched_g.load_state_dict(ckpt["sched_g"])
    parts.sched_d.load_state_dict(ckpt["sched_d"])
    if ckpt.get("scaler_g"):
        parts.scaler_g.load_state_dict(ckpt["scaler_g"])
        parts.scaler_d.load_state_dict(ckpt["scaler_d"])
    saved_pools = ckpt["pools"]
    if len(saved_pools) == world:
        for k, pool in parts.pools.items():
            pool.load_state_dict(saved_pools[rank][k])
    if parts.segs is not None and parts.opt_s is not None and ckpt.get("segmenters"):
        load_module_state(parts.segs, ckpt["segmenters"], "segmenters")
        parts.opt_s.load_state_dict(ckpt["opt_s"])
    saved_best = ckpt.get("selection") or {}
    if saved_best.get("history"):
        parts.best = {
            "score": float(saved_best["score"]),
            "iteration": int(saved_best["iteration"]),
            "state": ckpt.get("best_generators") or None,
            "history": [dict(h) for h in saved_best["history"]],
        }
    torch.set_rng_state(ckpt["rng"]["torch"])
    return int(ckpt["iteration"])


def checkpoint_state(parts: GanParts, iteration: int, pool_states: list[Any]) -> dict[str, Any]:
    """The checkpoint's tensors and state (``pool_states``: every rank's image pools)."""
    best = parts.best
    return {
        "generators": parts.gens.state_dict(),
        "discriminators": parts.discs.state_dict(),
        "opt_g": parts.opt_g.state_dict(),
        "opt_d": parts.opt_d.state_dict(),
        "sched_g": parts.sched_g.state_dict(),
        "sched_d": parts.sched_d.state_dict(),
        "scaler_g": parts.scaler_g.state_dict(),
        "scaler_d": parts.scaler_d.state_dict(),
        "pools": pool_states,
        "iteration": iteration,
        "rng": rng_state(),
        "segmenters": parts.segs.state_dict() if parts.segs is not None else {},
        "opt_s": parts.opt_s.state_dict() if parts.opt_s is not None else {},
        "selection": {k: v for k, v in best.items() if k != "state"},
        "best_generators": best["state"] or {},
    }


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
        "cpu_threads_used": threads_used(),
        **extra,
    }
    full = state if state is not None else gens.state_dict()
    split = {
        key: {k[len(key) + 1 :]: v for k, v in full.items() if k.startswith(key + ".")}
        for key in ("mr2ct", "ct2mr")
    }
    return save_checkpoint(run_dir / name, split, meta)


def save_results(
    parts: GanParts,
    run_dir: Path,
    cfg: GanConfig,
    data: UnpairedData,
    data_root: str | Path,
    quantiles: dict[str, Any],
    iteration: int,
    world: int,
    val: Any,
) -> None:
    """RUN/generators (the selected ones) and, when selection chose, RUN/generators_final."""
    best = parts.best
    extra = {
        "iterations": iteration,
        "world_size": world,
        "data_root": str(Path(data_root).resolve()),
        "train_patients": {"MR": data.mr_patients, "CT": data.ct_patients},
        "histograms": quantiles,
        "tumour_aware": {
            "segmentation_consistency": parts.segs is not None,
            "target_masks": bool(
                cfg.use_target_masks
                and (parts.segs is not None or any(v is not None for v in parts.refs.values()))
            ),
            "lesion_reference": {k: v.as_dict() if v else None for k, v in parts.refs.items()},
        },
    }
    chosen = best_entry(best) or {}
    selection = {
        "on": "paired_val" if val is not None else None,
        "iteration": best["iteration"] if best["state"] is not None else iteration,
        "score": best["score"] if best["state"] is not None else None,
        # the chosen generators' tumour contrast ratios and whether they carry the tumour
        # across (mrict.translation.selection.carries_tumour); None: not checked
        "mr2ct_contrast_ratio": chosen.get("mr2ct_contrast_ratio"),
        "ct2mr_contrast_ratio": chosen.get("ct2mr_contrast_ratio"),
        "carried": chosen.get("carried"),
        "history": best["history"],
    }
    save_generators(
        parts.gens, run_dir, cfg, {**extra, "selection": selection}, state=best["state"]
    )
    if best["state"] is not None:
        save_generators(
            parts.gens, run_dir, cfg, {**extra, "selection": {"on": None}}, name="generators_final"
        )


def check_in_sync(gens: nn.Module, info: dist.DistInfo) -> None:
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
