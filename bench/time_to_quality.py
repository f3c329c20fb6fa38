"""Time to quality: translation quality on the simulator's paired *validation* set (never
the test set) against wall-clock seconds of ``quick`` CycleGAN runs on the demo's data set,
so speed work is judged by how soon a user has a usable translator.

Two schedules, each trained from scratch for every seed: the ``quick`` preset as it is
(:data:`PRESET_ITERATIONS` steps) and a short schedule of :data:`SHORT_ITERATIONS` steps
(the same learning-rate rule: constant, then linear decay over the last half of the run).
Each run scores its generators every ``select_every`` steps (the trainer's own checkpoint
selection); ``on_step`` stamps the wall clock after every step. Reported per scoring point:
seconds since training started (data loading excluded), MR->CT MAE over the head and in
the tumour (HU), CT->MR MAE over the head and the selection score (1.0 = histogram
matching, lower is better). The summary compares the short schedule's final score (the
score of the checkpoint the trainer keeps is the best one; the final one is reported, the
stricter of the two) with the preset's, and its training seconds with the preset's.
"""

from __future__ import annotations

import csv
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import Result, Settings

#: "within 2 % of the preset's final score" counts as having reached its quality
TOLERANCE = 0.02
PRESET_ITERATIONS = 400
SHORT_ITERATIONS = 200


def _train(data: Path, run: Path, cfg) -> tuple[list[dict], dict[int, float], float]:
    """Train one run; its selection history, the seconds after each step (the first step's
    end starts the clock, after data loading; that step's own time is added back from the
    second step's) and the whole call's seconds."""
    from mrict.translation.trainer import train_cyclegan

    stamps: dict[int, float] = {}
    start: dict[str, float | None] = {"t": None}

    def on_step(iteration: int) -> None:
        now = time.perf_counter()
        stamps[iteration] = now - start["t"] if start["t"] is not None else 0.0
        if start["t"] is None:
            start["t"] = now

    t0 = time.perf_counter()
    train_cyclegan(data, run, cfg, progress=False, on_step=on_step)
    total = time.perf_counter() - t0
    with (run / "selection.csv").open(newline="") as fh:
        history = list(csv.DictReader(fh))
    first = stamps.get(2, 0.0)
    return history, {k: v + first for k, v in stamps.items()}, total


def run(s: Settings) -> Result:
    from mrict.commands.study import DEMO_DATA
    from mrict.config import resolve_config
    from mrict.phantom.simulate import simulate_dataset
    from mrict.translation.config import GAN_PRESETS, GanConfig

    res = Result("time_to_quality", "Time to quality: quick CycleGAN, paired validation set")
    data_kw = dict(DEMO_DATA)
    over: dict = {"select_every": 25, "device": s.device}
    long_it, short_it, seeds = PRESET_ITERATIONS, SHORT_ITERATIONS, [s.seed, s.seed + 1]
    if s.tiny:
        data_kw.update(mri_patients=4, ct_patients=4, test_patients=0, val_patients=2, size=32)
        over.update(image_size=32, ngf=4, n_blocks=1, ndf=4, select_every=2)
        long_it, short_it, seeds = 4, 2, [s.seed]
    elif s.quick:
        data_kw.update(mri_patients=30, ct_patients=30, test_patients=0)
        long_it, short_it, seeds = 100, 50, [s.seed]
    base = resolve_config(GanConfig, GAN_PRESETS, "quick", None, {})
    finals: dict[str, list[float]] = {"preset": [], "short": []}
    seconds: dict[str, list[float]] = {"preset": [], "short": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = simulate_dataset(Path(tmp) / "data", seed=s.seed, progress=False, **data_kw)
        for seed in seeds:
            for name, iterations in (("preset", long_it), ("short", short_it)):
                cfg = dataclasses.replace(base, **over, seed=seed, iterations=iterations)
                run_dir = Path(tmp) / f"run_{name}_{seed}"
                history, stamps, total = _train(data, run_dir, cfg)
                for h in history:
                    it = int(h["iteration"])
                    res.rows.append(
                        {
                            "schedule": f"{name} ({iterations} it)",
                            "seed": seed,
                            "iteration": it,
                            "seconds": stamps.get(it, float("nan")),
                            "MR->CT MAE head HU": float(h["mr2ct_head_hu"]),
                            "MR->CT MAE tumour HU": float(h["mr2ct_tumour_hu"]),
                            "CT->MR MAE head": float(h["ct2mr_head"]),
                            "score": float(h["score"]),
                        }
                    )
                finals[name].append(float(history[-1]["score"]))
                seconds[name].append(stamps.get(iterations, float("nan")))
                res.values[f"{name}_seed{seed}_call_seconds"] = total
    mean = {k: statistics.fmean(v) for k, v in finals.items()}
    secs = {k: statistics.fmean(v) for k, v in seconds.items()}
    reached = mean["short"] <= mean["preset"] * (1 + TOLERANCE)
    res.values.update(
        preset_score=mean["preset"],
        short_score=mean["short"],
        preset_seconds=secs["preset"],
        short_seconds=secs["short"],
        time_ratio=secs["short"] / secs["preset"],
        reached=reached,
    )
    res.notes.append(
        f"batch {base.batch_size}, {over.get('image_size', base.image_size)} px, precision "
        f"{base.precision}, seeds {', '.join(map(str, seeds))}. Final score, mean over seeds: "
        f"preset ({long_it} it) {mean['preset']:.3f} after {secs['preset']:.0f} s of training; "
        f"short ({short_it} it) {mean['short']:.3f} after {secs['short']:.0f} s "
        f"({secs['short'] / secs['preset']:.0%} of the time): "
        + (
            f"within {TOLERANCE:.0%} of the preset's quality."
            if reached
            else f"more than {TOLERANCE:.0%} worse than the preset."
        )
    )
    return res
