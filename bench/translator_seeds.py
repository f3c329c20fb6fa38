"""Seed robustness of a CycleGAN configuration: train it with several seeds and score each
run on the paired validation and test splits, at the lesion too, with real-target U-Nets.

Usage (from the repository root, mrict importable)::

    python -m bench.translator_seeds DATA --seg-ct SEG_CT --seg-mr SEG_MR --out DIR \
        --seeds 0-4 [--config CFG.yaml] [--preset quick] [--device auto] [--budget SECONDS]

DATA is a simulated data set with ``paired_val`` and ``paired_test``; SEG_CT / SEG_MR are
``mrict train-seg`` runs on real CT / MR. Each seed's row is appended to
``DIR/seeds.jsonl`` as soon as it is done (so a run stopped by ``--budget`` or a time limit
keeps what it finished), and a table is printed at the end: the run's validation selection
(iteration, score, whether it carries the tumour across), then per split the MR->CT head
and tumour MAE (HU), the translated tumour median (HU, ground truth in brackets), the
tumour contrast ratios of both directions and the real-target U-Nets' Dice on the
translations. The test columns are read, never used to choose anything.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out += list(range(int(lo), int(hi) + 1))
        elif part.strip():
            out.append(int(part))
    return out


def _dice(entry: dict[str, Any], direction: str) -> float | None:
    d = (entry.get("segmenter_dice") or {}).get(direction) or {}
    model = d.get("model", d)
    return model.get("dice") if isinstance(model, dict) else None


def summarise(run: Path, evals: dict[str, dict[str, Any]], seed: int, seconds: float) -> dict:
    """One seed's row (JSON-ready) from the run's selection and its two evaluations."""
    meta = json.loads((run / "generators.json").read_text())
    sel = (meta.get("meta") or meta).get("selection") or {}
    row: dict[str, Any] = {
        "seed": seed,
        "train_s": round(seconds, 1),
        "iteration": sel.get("iteration"),
        "score": sel.get("score"),
        "carried": sel.get("carried"),
        "val_mr2ct_contrast_ratio": sel.get("mr2ct_contrast_ratio"),
        "val_ct2mr_contrast_ratio": sel.get("ct2mr_contrast_ratio"),
        "history": sel.get("history"),
    }
    for split, e in evals.items():
        m, c = e["lesion"]["mr2ct"]["model"], e["lesion"]["ct2mr"]["model"]
        row[split] = {
            "head_mae_hu": e["mr2ct"]["model"]["mae_hu"],
            "tumour_mae_hu": m["mae_tumour_hu"],
            "tumour_median_hu": m["tumour_median_hu_pred"],
            "tumour_median_hu_gt": m["tumour_median_hu_gt"],
            "mr2ct_contrast_ratio": m["contrast_ratio"],
            "ct2mr_contrast_ratio": c["contrast_ratio"],
            "brain_highpass_ratio": (
                m["brain_highpass_sd_hu_pred"] / m["brain_highpass_sd_hu_gt"]
                if m.get("brain_highpass_sd_hu_gt")
                else None
            ),
            "dice_mr2ct": _dice(e, "mr2ct"),
            "dice_ct2mr": _dice(e, "ct2mr"),
        }
    return row


def _f(x: Any, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| seed | sel. it | score | carried | split | head MAE | tumour MAE | tumour median (GT)"
        " | contrast MR->CT / CT->MR | Dice MR->CT / CT->MR |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    lines = [head]
    for r in rows:
        for split in ("val", "test"):
            s = r.get(split)
            if s is None:
                continue
            lines.append(
                f"| {r['seed']} | {r['iteration']} | {_f(r['score'], 3)} | {r['carried']} | "
                f"{split} | {_f(s['head_mae_hu'], 1)} | {_f(s['tumour_mae_hu'], 1)} | "
                f"{_f(s['tumour_median_hu'], 1)} ({_f(s['tumour_median_hu_gt'], 0)}) | "
                f"{_f(s['mr2ct_contrast_ratio'])} / {_f(s['ct2mr_contrast_ratio'])} | "
                f"{_f(s['dice_mr2ct'], 3)} / {_f(s['dice_ct2mr'], 3)} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("--seg-ct", type=Path, required=True)
    p.add_argument("--seg-mr", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="0-4")
    p.add_argument("--config", type=Path, default=None, help="GanConfig YAML over the preset")
    p.add_argument("--preset", default="quick")
    p.add_argument("--device", default="auto")
    p.add_argument("--budget", type=float, default=0.0, help="stop starting seeds after this")
    p.add_argument("--jsonl", type=Path, default=None, help="rows file (default DIR/seeds.jsonl)")
    a = p.parse_args(argv)

    from mrict.config import resolve_config
    from mrict.translation.config import GAN_PRESETS, GanConfig
    from mrict.translation.evaluate import evaluate_translation
    from mrict.translation.trainer import train_cyclegan

    a.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    mean_s = 0.0
    for seed in _seeds(a.seeds):
        spent = time.perf_counter() - t_start
        if a.budget and rows and spent + mean_s > a.budget:
            print(f"budget: {spent:.0f} s spent, stopping before seed {seed}", flush=True)
            break
        t0 = time.perf_counter()
        cfg = resolve_config(
            GanConfig, GAN_PRESETS, a.preset, a.config, {"seed": seed, "device": a.device}
        )
        run = a.out / f"seed{seed}"
        t_train = time.perf_counter()
        train_cyclegan(a.data, run, cfg, progress=False)
        t_train = time.perf_counter() - t_train
        segs = {"CT": a.seg_ct, "MR": a.seg_mr}
        evals = {
            split: evaluate_translation(
                run,
                a.data,
                device=None if a.device == "auto" else a.device,
                write=False,
                paired_split=split,
                segmenters=segs,
                segmenter_split=split,
            )
            for split in ("val", "test")
        }
        row = summarise(run, evals, seed, t_train)
        rows.append(row)
        with (a.jsonl or a.out / "seeds.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        took = time.perf_counter() - t0
        mean_s = (mean_s * (len(rows) - 1) + took) / len(rows)
        print("\n".join(table([row]).splitlines()[-2:]), flush=True)
        print(f"seed {seed}: {took:.0f} s (training {t_train:.0f} s)", flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
