"""Scaling: CycleGAN time per epoch at 1x, 2x and 4x the data (should grow linearly), and
data-parallel training with 2 processes (gloo, CPU) against 1 at the same total threads."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import Result, Settings, make_dataset, median

REPO = Path(__file__).resolve().parents[1]


def _epoch_time(root: Path, run: Path, cfg) -> dict[str, float]:
    from mrict.translation.data import load_unpaired
    from mrict.translation.trainer import train_cyclegan

    data = load_unpaired(root, cfg.image_size, cfg.split_seed, progress=False)
    n = max(len(data.mr), len(data.ct))
    stamps: list[float] = []
    t0 = time.perf_counter()
    train_cyclegan(
        root, run, cfg, progress=False, on_step=lambda i: stamps.append(time.perf_counter())
    )
    total = time.perf_counter() - t0
    # the loop without data loading: the first step (warm-up) counts as a median step
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    loop = stamps[-1] - stamps[0] + median(gaps) if gaps else total
    return {"images": float(n), "steps": float(len(stamps)), "epoch_s": loop, "wall_s": total}


def _ddp(
    root: Path,
    work: Path,
    nproc: int,
    arch: tuple[int, int, int, int],
    iters: int,
    threads: int | None = None,
) -> dict:
    size, ngf, blocks, batch = arch
    threads = threads or max(1, (os.cpu_count() or 2) // nproc)
    work = work / f"ddp{nproc}x{threads}"
    work.mkdir(parents=True, exist_ok=True)
    result = work / f"ddp{nproc}.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "bench.ddp_worker",
        str(root),
        str(work / f"ddp_run{nproc}"),
        str(result),
        str(size),
        str(ngf),
        str(blocks),
        str(batch),
        str(iters),
        str(threads),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": str(threads),
    }
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not result.is_file():
        tail = (proc.stderr or proc.stdout)[-800:]
        raise RuntimeError(f"DDP run with {nproc} process(es) failed: {tail}")
    return json.loads(result.read_text())


def run(s: Settings, ddp: bool = True) -> Result:
    """Epoch scaling, then (``ddp`` and on CPU) the 2-process vs 1-process comparison."""
    from mrict.translation.config import GanConfig

    res = Result("scaling", "Scaling: epoch time vs data size; DDP 2 processes vs 1")
    if s.tiny:
        size, ngf, blocks, batch, base, per, ddp_iters = 32, 4, 1, 2, 4, 1, 3
    elif s.quick:
        size, ngf, blocks, batch, base, per, ddp_iters = 48, 8, 2, 2, 6, 2, 5
    else:
        size, ngf, blocks, batch, base, per, ddp_iters = 96, 24, 6, 4, 8, 3, 8
    cfg = dataclasses.replace(
        GanConfig(),
        image_size=size,
        ngf=ngf,
        n_blocks=blocks,
        ndf=ngf,
        batch_size=batch,
        epochs=1,
        iterations=0,
        log_every=10**9,
        checkpoint_every=0,
        sample_count=1,
        device=s.device,
    )
    with tempfile.TemporaryDirectory(prefix="mrict-bench-") as tmp:
        work = Path(tmp)
        first = None
        for mult in (1, 2, 4):
            root = work / f"data{mult}"
            make_dataset(root, base * mult, per, size, s.seed)
            r = _epoch_time(root, work / f"run{mult}", cfg)
            per_image = r["epoch_s"] / r["images"]
            first = first or r["epoch_s"]
            res.rows.append(
                {
                    "what": f"epoch, {mult}x data",
                    "train images": int(r["images"]),
                    "steps": int(r["steps"]),
                    "s/epoch": r["epoch_s"],
                    "ms/image": 1e3 * per_image,
                    "vs 1x": r["epoch_s"] / first,
                }
            )
            res.values[f"epoch_{mult}x"] = r
        if ddp and s.device == "cpu" and torch.distributed.is_available():
            root = work / "data4"
            arch = (size, ngf, blocks, batch)
            one = _ddp(root, work, 1, arch, ddp_iters)
            single = [one]
            if (os.cpu_count() or 1) > 1:  # the same process count, one thread
                single.append(_ddp(root, work, 1, arch, ddp_iters, threads=1))
            two = _ddp(root, work, 2, arch, ddp_iters)
            for r in (*single, two):
                step = median(r["step_s"][1:] or r["step_s"])
                ips = r["world"] * r["batch"] / step
                r["images_per_s"] = ips
                res.rows.append(
                    {
                        "what": f"DDP gloo, {r['world']} process(es) x {r['threads']} thread(s)",
                        "steps": len(r["step_s"]),
                        "s/step": step,
                        "images/s": ips,
                        "vs first row": ips / one.get("images_per_s", ips),
                    }
                )
            res.values["ddp"] = {"1": one, "1x1": single[-1], "2": two}
        elif ddp:
            res.notes.append("DDP comparison runs on CPU only (gloo).")
    res.notes.append(
        f"CycleGAN {size} px, ngf {ngf}, {blocks} blocks, batch {batch} per process, all losses "
        "of the default config; s/epoch is the training loop only (data loading excluded), "
        "DDP rows are medians of step times, each process holding the same batch size."
    )
    return res
