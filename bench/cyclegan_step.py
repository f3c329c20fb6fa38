"""CycleGAN training step: mrict's trainer against the plain reference, interleaved in one
process, with the achieved convolution FLOP/s as a fraction of the machine's matmul peak.

mrict's step is timed inside its real training loop (``train_cyclegan``): after each of its
steps the trainer calls ``on_step``, which runs and times one reference step; the mrict step
time is the time between two callbacks minus the callback itself. Both see the same kind of
batches ((B, 1, H, W) in [-1, 1] from the built-in data set, held in memory).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import Result, Settings, make_dataset, median, sync, time_call
from bench.flops import count_flops, peak_matmul_flops
from bench.reference_cyclegan import ReferenceCycleGAN
from mrict.runtime.device import cpu_bf16_path, resolve_precision


def loss_label(cfg) -> str:
    """The loss terms a GanConfig trains with, e.g. "adv+cyc+ssim+mind"."""
    parts = ["adv", "cyc"]
    if cfg.lambda_identity > 0:
        parts.append("idt")
    if cfg.lambda_ssim > 0:
        parts.append("ssim")
    if cfg.feature_loss != "none" and cfg.lambda_feature > 0:
        parts.append(cfg.feature_loss)
    # the tumour-aware terms: the benchmark's data sets are labelled, so they are on
    if cfg.lambda_seg > 0:
        parts.append("seg")
    if cfg.lambda_lesion > 0:
        parts.append("lesion")
    return "+".join(parts)


def _case(label: str, preset: str, over: dict[str, Any], steps: int, same: bool) -> dict:
    return {"label": label, "preset": preset, "over": over, "steps": steps, "same": same}


def other_precision(device: str) -> str:
    """The precision ``auto`` does not choose on ``device`` (bf16 where auto gives fp32,
    else fp32): timing it checks the automatic choice."""
    return "fp32" if resolve_precision(torch.device(device), "auto") == "bf16" else "bf16"


def _cases(s: Settings) -> list[dict[str, Any]]:
    """Cases: label, preset, overrides, timed steps, same losses as the reference? The
    last one is the quick preset in the precision ``auto`` does not choose."""
    other = other_precision(s.device)
    if s.tiny:
        arch = {"image_size": 32, "ngf": 4, "n_blocks": 1, "ndf": 4, "batch_size": 2}
        return [
            _case("tiny, all losses", "quick", arch, 2, False),
            _case(f"tiny, all losses, {other}", "quick", {**arch, "precision": other}, 2, False),
        ]
    if s.quick:
        return [
            _case("quick", "quick", {}, 2, True),
            _case("quick, all losses", "quick", {}, 2, False),
            _case("paper arch at 128 px", "paper", {"image_size": 128}, 2, True),
            _case(f"quick, all losses, {other}", "quick", {"precision": other}, 2, False),
        ]
    cases = [
        _case("quick", "quick", {}, 16, True),
        _case("quick, all losses", "quick", {}, 10, False),
        _case("paper", "paper", {}, 4, True),
    ]
    if torch.device(s.device).type == "cuda":
        # small steps on a GPU are bound by kernel launches, which torch.compile fuses; on a
        # CPU its 30-40 s of compiling outweighs what it saves in a timed run this short
        cases.append(_case("quick, all losses, compiled", "quick", {"compile": True}, 10, False))
    cases.append(_case(f"quick, all losses, {other}", "quick", {"precision": other}, 10, False))
    return cases


def _config(preset: str, over: dict[str, Any], same_losses: bool, device: str, iterations: int):
    from mrict.config import resolve_config
    from mrict.translation.config import GAN_PRESETS, GanConfig

    cfg = resolve_config(GanConfig, GAN_PRESETS, preset, None, {})
    extra: dict[str, Any] = {
        "iterations": iterations,
        "epochs": 0,
        "log_every": 10**9,
        "checkpoint_every": 0,
        "sample_count": 1,
        "device": device,
        **over,
    }
    if same_losses:
        # the reference has none of these: no SSIM, feature, segmentation-consistency
        # (two jointly trained U-Nets) or lesion term
        extra.update(
            lambda_ssim=0.0,
            feature_loss="none",
            lambda_feature=0.0,
            lambda_seg=0.0,
            lambda_lesion=0.0,
        )
    return dataclasses.replace(cfg, **extra)


def step_pair(case: dict[str, Any], s: Settings, work: Path, warmup: int = 1) -> dict[str, Any]:
    """Median seconds per step of mrict's trainer and of the reference, interleaved."""
    from mrict.translation.data import load_unpaired
    from mrict.translation.trainer import train_cyclegan

    steps = case["steps"]
    cfg = _config(case["preset"], case["over"], case["same"], s.device, warmup + steps + 1)
    data_root = work / f"data_{cfg.image_size}"
    if not data_root.exists():
        # enough slices that no epoch ends (sample grids) inside the timed steps
        per_patient = 8
        need = cfg.batch_size * (warmup + steps + 2)
        patients = max(4, -(-need // (per_patient // 2)))
        make_dataset(data_root, patients, per_patient, cfg.image_size, s.seed)
    data = load_unpaired(data_root, cfg.image_size, cfg.split_seed, progress=False)
    ref = ReferenceCycleGAN(
        cfg.ngf,
        cfg.n_blocks,
        cfg.ndf,
        cfg.n_layers_d,
        cfg.lr,
        cfg.lambda_cycle,
        cfg.lambda_identity,
        cfg.pool_size,
        s.device,
        s.seed,
    )
    gen = torch.Generator().manual_seed(s.seed)

    def ref_step() -> None:
        i = torch.randint(len(data.mr), (cfg.batch_size,), generator=gen)
        j = torch.randint(len(data.ct), (cfg.batch_size,), generator=gen)
        ref.step(data.mr[i], data.ct[j])

    t_project: list[float] = []
    t_reference: list[float] = []
    state: dict[str, float | None] = {"end": None}

    def on_step(iteration: int) -> None:
        sync(s.device)
        now = time.perf_counter()
        if state["end"] is not None and iteration > 1 + warmup:
            t_project.append(now - state["end"])
        if iteration <= warmup + steps:
            dt = time_call(ref_step, s.device)
            if iteration > warmup:
                t_reference.append(dt)
        state["end"] = time.perf_counter()

    run = work / f"run_{case['label'].replace(' ', '_').replace(',', '')}"
    train_cyclegan(data_root, run, cfg, progress=False, on_step=on_step)
    meta = ReferenceCycleGAN(
        cfg.ngf, cfg.n_blocks, cfg.ndf, cfg.n_layers_d, device="meta", seed=s.seed
    )
    x = torch.empty(cfg.batch_size, 1, cfg.image_size, cfg.image_size, device="meta")
    flops = count_flops(lambda: meta.step(x, x))
    from mrict.runtime.device import resolve_precision

    return {
        "case": case["label"],
        "config": cfg,
        "precision": resolve_precision(torch.device(s.device), cfg.precision),
        "project_s": median(t_project),
        "reference_s": median(t_reference),
        "project_all": t_project,
        "reference_all": t_reference,
        "flops": flops,
    }


def run(s: Settings) -> Result:
    res = Result("cyclegan", "CycleGAN training step: mrict trainer vs plain fp32 reference")
    budget = 1.0 if s.tiny else 3.0
    sizes = (256,) if s.tiny else (1024, 2048)
    if torch.device(s.device).type == "cuda" and not s.tiny:
        sizes = (4096, 8192)  # a GPU reaches its matmul peak only on large products

    def peaks() -> tuple[float, float]:
        return (
            peak_matmul_flops(torch.float32, s.device, sizes, budget_s=budget)["flops_per_s"],
            peak_matmul_flops(torch.bfloat16, s.device, sizes, budget_s=budget)["flops_per_s"],
        )

    # measured before and after the steps, the best of each kept: a momentary disturbance
    # must not lower the peak (it would inflate every "% of peak")
    peak32, peak16 = peaks()
    with tempfile.TemporaryDirectory(prefix="mrict-bench-") as tmp:
        # a compiled step recompiles in its first steps (shapes, grad modes): warm up longer
        results = []
        for case in _cases(s):
            try:
                results.append(
                    step_pair(case, s, Path(tmp), warmup=3 if case["over"].get("compile") else 1)
                )
            except Exception as exc:  # one failing case (e.g. no compiler) keeps the others
                res.notes.append(f"case '{case['label']}' failed: {type(exc).__name__}: {exc}")
    after32, after16 = peaks()
    peak32, peak16 = max(peak32, after32), max(peak16, after16)
    res.values["peak_fp32_flops"] = peak32
    res.values["peak_bf16_flops"] = peak16
    for r in results:
        cfg = r["config"]
        work = r["flops"]["conv"]
        peak_p = peak16 if r["precision"] == "bf16" else peak32
        row = {
            "case": r["case"],
            "size": cfg.image_size,
            "ngf/blocks": f"{cfg.ngf}/{cfg.n_blocks}",
            "batch": cfg.batch_size,
            "losses": loss_label(cfg),
            "mrict precision": r["precision"],
            "steps": len(r["project_all"]),
            "reference s/step": r["reference_s"],
            "mrict s/step": r["project_s"],
            "speed-up": r["reference_s"] / r["project_s"],
            "conv GFLOP/step": work / 1e9,
            "reference % fp32 peak": 100 * work / r["reference_s"] / peak32,
            f"mrict % {r['precision']} peak": 100 * work / r["project_s"] / peak_p,
        }
        res.rows.append(row)
        res.values[r["case"]] = {k: v for k, v in r.items() if k not in ("config",)}
    res.notes.append(
        f"Peak matmul on this device: fp32 {peak32 / 1e9:.1f} GFLOP/s, bf16 "
        f"{peak16 / 1e9:.1f} GFLOP/s (best of square {sizes} matmuls, measured before and after the steps)."
    )
    res.notes.append(
        "Conv GFLOP/step is the reference step's convolution work (forward + backward, counted "
        "by torch.utils.flop_counter on the meta device); both columns of % peak use that same "
        "useful work, so a step that avoids recomputation shows as a higher fraction."
    )
    res.notes.append(
        f"The last row forces {other_precision(s.device)}, the precision `--precision auto` "
        "does not choose here: it is the check of the automatic choice (auto is right when "
        "that row is slower than the same case in the chosen precision)."
    )
    if s.device == "cpu" and cpu_bf16_path() == "none":
        res.notes.append(
            "This CPU has no native bf16 instructions: its bf16 matmul peak is emulated and "
            "far below what oneDNN's bf16 convolutions reach, so '% bf16 peak' exceeds 100 "
            "and says nothing here."
        )
    return res
