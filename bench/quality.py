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


def _mean_row(rows: list[dict], model: str) -> dict:
    keys = [k for k in rows[0] if k not in ("model", "seed", "iterations")]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    return {
        "model": f"{model}, mean of {len(rows)} seeds",
        "seed": "all",
        "iterations": rows[0]["iterations"],
        **mean,
    }


def run(s: Settings) -> Result:
    from mrict.translation.evaluate import evaluate_translation
    from mrict.translation.trainer import train_cyclegan

    res = Result("quality", "Translation quality at the same number of steps")
    if s.tiny:
        over = {"image_size": 32, "ngf": 4, "n_blocks": 1, "ndf": 4, "batch_size": 2}
        iters, patients, test, seeds, with_all = 2, 4, 1, (s.seed,), False
    elif s.quick:
        over = {"image_size": 64, "ngf": 16, "n_blocks": 3, "ndf": 16}
        iters, patients, test, seeds, with_all = 40, 8, 2, (s.seed,), False
    else:
        # one GAN run is noisy: compare the two implementations over three training seeds
        over = {}
        iters, patients, test, seeds, with_all = 300, 16, 4, (s.seed, s.seed + 1, s.seed + 2), True
    with tempfile.TemporaryDirectory(prefix="mrict-bench-") as tmp:
        work = Path(tmp)
        size = over.get("image_size", 96)
        data = work / "data"
        make_dataset(data, patients, 8, size, s.seed, test_patients=test)
        rows: list[dict] = []

        def score(model: str, seed: int, train) -> dict:
            t0 = time.perf_counter()
            run_dir = train()
            t = time.perf_counter() - t0
            sc = _scores(evaluate_translation(run_dir, data, device=s.device, write=False))
            row = {"model": model, "seed": seed, "iterations": iters, "train s": t, **sc}
            rows.append(row)
            return row

        groups: dict[str, list[dict]] = {}
        for seed in seeds:
            same = dataclasses.replace(_config("quick", over, True, s.device, iters), seed=seed)
            base = dataclasses.replace(same, checkpoint_every=0, decay_fraction=0.5)
            ref_name = f"reference (fp32, {loss_label(base)})"
            groups.setdefault(ref_name, []).append(
                score(
                    ref_name,
                    seed,
                    lambda b=base, k=seed: train_reference(data, work / f"ref{k}", b, iters),
                )
            )
            name = f"mrict ({loss_label(same)})"
            groups.setdefault(name, []).append(
                score(
                    name,
                    seed,
                    lambda c=same, k=seed: train_cyclegan(
                        data, work / f"mrict{k}", c, progress=False
                    ),
                )
            )
        if with_all:
            cfg = dataclasses.replace(_config("quick", over, False, s.device, iters), seed=s.seed)
            score(
                f"mrict ({loss_label(cfg)}, the quick preset)",
                s.seed,
                lambda: train_cyclegan(data, work / "mrict_all", cfg, progress=False),
            )
        if len(seeds) > 1:
            rows += [_mean_row(g, name) for name, g in groups.items()]
        res.rows = rows
        res.values = {"rows": rows}
    res.notes.append(
        f"quick preset architecture with {over or 'no'} overrides, {iters} iterations, "
        f"{patients} MR + {patients} CT patients x 8 slices, {test} paired test patients, "
        f"training seeds {list(seeds)} (same data and split); lower MAE / higher PSNR and SSIM "
        "is better. 'train s' includes data loading and saving."
    )
    return res
