"""Does each hand-written fast layer earn its place? A CycleGAN training step with all fast
layers, without one of them, and without any (``fast_path`` off), interleaved step by step
inside one real training run (``train_cyclegan``), for the quick and paper presets.

A layer is switched off by making its module's ``use_fast_path`` return False, so it runs
PyTorch's own op with the same weights: only the kernel changes. Each configuration runs
every K-th step; the step time is the time between two ``on_step`` callbacks. Reported:
median seconds per step and the speed-up the layer gives (time without / time with all).
"""

from __future__ import annotations

import dataclasses
import importlib
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Result, Settings, make_dataset, median, sync

#: the fast layers and the module whose ``use_fast_path`` gates each
LAYERS = {
    "head_conv": "mrict.translation.head_conv",
    "stem_conv": "mrict.translation.stem_conv",
    "reflect_pad": "mrict.translation.reflect_pad",
    "instance_norm": "mrict.translation.instance_norm",
}
CONFIGS = ("all fast layers", *(f"without {k}" for k in LAYERS), "without any (fast_path off)")


def _switch(config: str, originals: dict[str, Any]) -> None:
    """Gate every fast layer as ``config`` says."""

    def off(x: Any) -> bool:
        return False

    for name, module in LAYERS.items():
        mod = importlib.import_module(module)
        disabled = config == CONFIGS[-1] or config == f"without {name}"
        mod.use_fast_path = off if disabled else originals[name]


def ablation(preset: str, over: dict[str, Any], rounds: int, s: Settings, work: Path) -> dict:
    """Median seconds per step of every configuration, ``rounds`` interleaved rounds."""
    from mrict.config import resolve_config
    from mrict.translation.config import GAN_PRESETS, GanConfig
    from mrict.translation.trainer import train_cyclegan

    k = len(CONFIGS)
    warmup = k  # one untimed round
    total = warmup + rounds * k + 1
    cfg = resolve_config(GanConfig, GAN_PRESETS, preset, None, {})
    cfg = dataclasses.replace(
        cfg,
        iterations=total,
        epochs=0,
        log_every=10**9,
        checkpoint_every=0,
        select_every=0,
        sample_count=1,
        device=s.device,
        **over,
    )
    data_root = work / f"data_{cfg.image_size}"
    if not data_root.exists():
        need = cfg.batch_size * (total + 2)
        make_dataset(data_root, max(4, -(-need // 4)), 8, cfg.image_size, s.seed)
    originals = {n: importlib.import_module(m).use_fast_path for n, m in LAYERS.items()}
    times: dict[str, list[float]] = {c: [] for c in CONFIGS}
    state: dict[str, Any] = {"end": None}

    def on_step(iteration: int) -> None:
        sync(s.device)
        now = time.perf_counter()
        if state["end"] is not None and iteration > warmup:
            times[CONFIGS[(iteration - 1) % k]].append(now - state["end"])
        _switch(CONFIGS[iteration % k], originals)  # the next step's configuration
        state["end"] = time.perf_counter()

    _switch(CONFIGS[0], originals)
    try:
        train_cyclegan(data_root, work / f"run_{preset}", cfg, progress=False, on_step=on_step)
    finally:
        _switch(CONFIGS[0], originals)
    base = median(times[CONFIGS[0]])
    return {
        "preset": preset,
        "image_size": cfg.image_size,
        "batch_size": cfg.batch_size,
        "rounds": rounds,
        "seconds": {c: median(v) for c, v in times.items()},
        "speedup": {c: median(v) / base for c, v in times.items()},
    }


def run(s: Settings) -> Result:
    res = Result("fast_layers", "Fast layers: CycleGAN step with and without each")
    if s.tiny:
        cases = [("quick", {"image_size": 32, "ngf": 4, "n_blocks": 1, "ndf": 4}, 1)]
    elif s.quick:
        cases = [("quick", {}, 3), ("paper", {"image_size": 128}, 2)]
    else:
        cases = [("quick", {}, 8), ("paper", {}, 3)]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset, over, rounds in cases:
            r = ablation(preset, over, rounds, s, Path(tmp))
            out.append(r)
            for c in CONFIGS:
                res.rows.append(
                    {
                        "preset": f"{preset} ({r['image_size']} px, batch {r['batch_size']})",
                        "configuration": c,
                        "s/step": r["seconds"][c],
                        "time vs all fast": r["speedup"][c],
                    }
                )
    res.values["cases"] = out
    res.notes.append(
        "Interleaved: configuration i runs steps i, i+K, i+2K... of one training run "
        f"(K = {len(CONFIGS)}); the first round is not timed. A layer earns its place at a "
        "time ratio of 1.10 or more without it on the quick or paper step."
    )
    return res
