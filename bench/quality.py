"""Translation quality at equal steps: mrict's trainer and the plain reference trained for
the same number of iterations on the same built-in data (same data order and flips), scored
on the paired test set (MR->CT MAE in HU, PSNR, SSIM; CT->MR on normalised intensities)."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

from bench.common import Result, Settings, make_dataset
from bench.cyclegan_step import _config, loss_label
from bench.reference_cyclegan import train_reference


def _scores(ev: dict) -> dict[str, float]:
    m2c, c2m = ev["mr2ct"]["model"], ev["ct2mr"]["model"]
    return {
        "MR->CT MAE HU": m2c.get("mae_hu", float("nan")),
        "MR->CT PSNR": m2c.get("psnr", float("nan")),
        "MR->CT SSIM": m2c.get("ssim", float("nan")),
        "CT->MR MAE": c2m.get("mae", float("nan")),
        "CT->MR SSIM": c2m.get("ssim", float("nan")),
    }


def run(s: Settings) -> Result:
    from mrict.translation.evaluate import evaluate_translation
    from mrict.translation.trainer import train_cyclegan

    res = Result("quality", "Translation quality at the same number of steps")
    if s.tiny:
        over = {"image_size": 32, "ngf": 4, "n_blocks": 1, "ndf": 4, "batch_size": 2}
        iters, patients, test, variants = 2, 4, 1, (True,)
    elif s.quick:
        over = {"image_size": 64, "ngf": 16, "n_blocks": 3, "ndf": 16}
        iters, patients, test, variants = 40, 8, 2, (True,)
    else:
        over = {}
        iters, patients, test, variants = 300, 16, 4, (True, False)
    with tempfile.TemporaryDirectory(prefix="mrict-bench-") as tmp:
        work = Path(tmp)
        size = over.get("image_size", 96)
        data = work / "data"
        make_dataset(data, patients, 8, size, s.seed, test_patients=test)
        rows = []
        base = _config("quick", over, True, s.device, iters)
        base = dataclasses.replace(base, checkpoint_every=0, decay_fraction=0.5)
        t0 = time.perf_counter()
        ref_run = train_reference(data, work / "ref", base, iters)
        t_ref = time.perf_counter() - t0
        ref = _scores(evaluate_translation(ref_run, data, device=s.device, write=False))
        rows.append(
            {
                "model": f"reference (fp32, {loss_label(base)})",
                "iterations": iters,
                "train s": t_ref,
                **ref,
            }
        )
        res.values["reference"] = ref
        for same in variants:
            cfg = _config("quick", over, same, s.device, iters)
            t0 = time.perf_counter()
            run_dir = train_cyclegan(data, work / f"mrict_{same}", cfg, progress=False)
            t = time.perf_counter() - t0
            sc = _scores(evaluate_translation(run_dir, data, device=s.device, write=False))
            label = loss_label(cfg)
            rows.append({"model": f"mrict ({label})", "iterations": iters, "train s": t, **sc})
            res.values[f"mrict_{'same' if same else 'all'}"] = sc
        res.rows = rows
    res.notes.append(
        f"quick preset architecture with {over or 'no'} overrides, {iters} iterations, "
        f"{patients} MR + {patients} CT patients x 8 slices, {test} paired test patients; "
        "lower MAE / higher PSNR and SSIM is better. 'train s' includes data loading and saving."
    )
    return res
