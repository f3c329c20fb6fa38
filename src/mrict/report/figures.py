"""Study figures (PNG, written atomically): sample translations, segmentation metrics with
error bars, predicted-vs-true overlays, training curves and validation curves."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrict.runtime.atomic import atomic_path
from mrict.study.scenarios import REGISTRY

#: scenario key -> short label (from the scenario registry; its order is the colour order)
SCENARIO_LABELS = {k: s.short for k, s in REGISTRY.items()}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())
    return path


def _show(ax: Any, image: np.ndarray, title: str) -> None:
    ax.imshow(image, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def sample_translations(
    path: Path, rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]]
) -> Path:
    """One row per direction: (label, input, translation, cycle reconstruction), (H, W) each
    in [-1, 1]."""
    plt = _plt()
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)), squeeze=False)
    for r, (label, x, y, z) in enumerate(rows):
        src, tgt = label.split("->")
        _show(axes[r, 0], x, f"input {src}")
        _show(axes[r, 1], y, f"{label} translation")
        _show(axes[r, 2], z, f"cycle {src}->{tgt}->{src}")
    fig.suptitle("CycleGAN on test patients (unseen in training)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def segmentation_metrics(path: Path, summary: Sequence[dict[str, Any]]) -> Path:
    """Dice and IoU per scenario (bars: mean over seeds; error bars: 95% CI over patients)."""
    plt = _plt()
    targets = sorted({r["target"] for r in summary})
    fig, axes = plt.subplots(len(targets), 2, figsize=(10, 3.3 * len(targets)), squeeze=False)
    for i, target in enumerate(targets):
        sub = [r for r in summary if r["target"] == target]
        labels = [
            SCENARIO_LABELS.get(r["scenario"], r["scenario"])
            + (f"\nf={r['label_fraction']:g}" if r["label_fraction"] else "")
            for r in sub
        ]
        colors = [f"C{list(SCENARIO_LABELS).index(r['scenario'])}" for r in sub]
        for j, metric in enumerate(("dice", "iou")):
            ax = axes[i, j]
            means = np.array([_num(r[f"{metric}_mean"]) for r in sub])
            lo = np.array([_num(r[f"{metric}_ci_patients_lo"]) for r in sub])
            hi = np.array([_num(r[f"{metric}_ci_patients_hi"]) for r in sub])
            err = np.vstack([np.nan_to_num(means - lo), np.nan_to_num(hi - means)])
            x = np.arange(len(sub))
            ax.bar(x, np.nan_to_num(means), color=colors, yerr=np.clip(err, 0, None), capsize=3)
            for xi, m in zip(x, means, strict=True):
                if math.isfinite(m):
                    ax.text(xi, 0.02, f"{m:.2f}", ha="center", fontsize=7, color="white")
            ax.set_xticks(x, labels, fontsize=7, rotation=25, ha="right")
            ax.set_ylim(0, 1)
            ax.set_ylabel(metric.upper() if metric == "iou" else "Dice")
            ax.set_title(
                f"target {target}: {metric.upper() if metric == 'iou' else 'Dice'} "
                "(95% CI over patients)",
                fontsize=9,
            )
    fig.tight_layout()
    return _save(fig, path)


def _num(v: Any) -> float:
    return float(v) if v is not None else math.nan


def overlays(
    path: Path, panels: dict[str, list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]]
) -> Path:
    """Rows: targets; columns: scenarios. Each panel (title, image, true, pred): the test
    image with the true mask outline (green) and the predicted one (red)."""
    plt = _plt()
    targets = list(panels)
    ncol = max(len(v) for v in panels.values())
    fig, axes = plt.subplots(
        len(targets),
        ncol,
        figsize=(2.6 * ncol, 3.0 * len(targets)),
        squeeze=False,
        layout="constrained",
    )
    for i, target in enumerate(targets):
        for j in range(ncol):
            ax = axes[i, j]
            ax.axis("off")
            if j >= len(panels[target]):
                continue
            title, image, true, pred = panels[target][j]
            ax.imshow(image, cmap="gray", vmin=-1, vmax=1)
            if true.any():
                ax.contour(true, levels=[0.5], colors="lime", linewidths=1.0)
            if pred.any():
                ax.contour(pred, levels=[0.5], colors="red", linewidths=1.0)
            ax.set_title(f"{target}: {title}", fontsize=7)
    fig.suptitle("test slices: true mask (green) vs prediction (red)", fontsize=9)
    return _save(fig, path)


def read_history(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    with path.open() as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def loss_curves(path: Path, curves: dict[str, dict[str, list[dict[str, float]]]]) -> Path:
    """Per target: training loss (solid) and validation Dice (dashed) of each scenario."""
    plt = _plt()
    targets = list(curves)
    fig, axes = plt.subplots(len(targets), 2, figsize=(10, 3.0 * len(targets)), squeeze=False)
    for i, target in enumerate(targets):
        for k, (label, hist) in enumerate(curves[target].items()):
            if not hist:
                continue
            it = [h["iteration"] for h in hist]
            axes[i, 0].plot(it, [h["train_loss"] for h in hist], f"C{k}-", label=label)
            axes[i, 1].plot(it, [h["val_dice"] for h in hist], f"C{k}--o", ms=3, label=label)
        axes[i, 0].set_title(f"target {target}: training loss (Dice + BCE)", fontsize=9)
        axes[i, 1].set_title(f"target {target}: validation Dice (selection split)", fontsize=9)
        axes[i, 1].set_ylim(0, 1)
        for ax in axes[i]:
            ax.set_xlabel("iteration")
            ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def validation_curves(
    path: Path, curves: dict[str, list[tuple[str, str, float, list[dict[str, float]]]]]
) -> Path:
    """One panel per target: validation Dice (on each run's selection split) against the
    iteration for each scenario. ``curves[target]`` holds ``(scenario, label, fraction,
    history rows)``; colour = scenario, line style = label fraction (solid = largest);
    the selected (best) validation is starred."""
    plt = _plt()
    targets = list(curves)
    fig, axes = plt.subplots(
        1, max(1, len(targets)), figsize=(5.2 * max(1, len(targets)), 3.6), squeeze=False
    )
    order = list(SCENARIO_LABELS)
    for i, target in enumerate(targets):
        ax = axes[0, i]
        fractions = sorted({f for _, _, f, _ in curves[target] if f}, reverse=True)
        styles = ["-", "--", ":", "-."]
        for scenario, label, f, hist in curves[target]:
            pts = [(h["iteration"], h["val_dice"]) for h in hist if math.isfinite(h["val_dice"])]
            if not pts:
                continue
            color = f"C{order.index(scenario) if scenario in order else len(order)}"
            style = styles[fractions.index(f) % len(styles)] if f in fractions else "-"
            its, vals = zip(*pts, strict=True)
            ax.plot(its, vals, style, color=color, lw=1.2, label=label)
            k = int(np.argmax(vals))
            ax.plot(its[k], vals[k], "*", color=color, ms=9)
        ax.set_ylim(0, 1)
        ax.set_xlabel("iteration")
        ax.set_ylabel("validation Dice")
        ax.set_title(
            f"target {target}: validation Dice (selection split; * = selected)", fontsize=9
        )
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def make_figures(
    fig_dir: Path,
    gens: dict[str, Any],
    part: dict[str, dict[str, Any]],
    targets: Sequence[str],
    run_dirs: dict[tuple[str, str, float, int], Path],
    seeds: Sequence[int],
    fractions: Sequence[float],
    summary: Sequence[dict[str, Any]],
) -> dict[str, Path]:
    """All study figures; returns {name: path}. Uses the first seed's models and, for the
    target-label scenarios, the largest label fraction."""
    from mrict.data.geometry import resize_batch
    from mrict.segmentation.predict import load_segmenter, predict_masks
    from mrict.translation.translate import translate_array

    fig_dir = Path(fig_dir)
    out: dict[str, Path] = {}

    def biggest(s: Any) -> int:
        area = s.masks.reshape(len(s), -1).sum(1)
        return int(np.argmax(area))

    rows = []
    for src, fwd, bwd in (("MR", "mr2ct", "ct2mr"), ("CT", "ct2mr", "mr2ct")):
        test = part[src]["test"]
        x = test.images[biggest(test)][None]
        g = int(getattr(gens[fwd], "image_size", x.shape[-1]))
        xg = resize_batch(x, g)
        y = translate_array(gens[fwd], xg)
        z = translate_array(gens[bwd], y)
        rows.append((f"{src}->{'CT' if src == 'MR' else 'MR'}", xg[0], y[0], z[0]))
    out["sample_translations"] = sample_translations(fig_dir / "sample_translations.png", rows)
    out["segmentation_metrics"] = segmentation_metrics(
        fig_dir / "segmentation_metrics.png", summary
    )
    f0, s0 = max(fractions), seeds[0]
    panels: dict[str, list] = {}
    curves: dict[str, dict[str, list]] = {}
    val_curves: dict[str, list] = {}
    for target in targets:
        test = part[target]["test"].labelled()
        k = biggest(test)
        panels[target] = [("image", test.images[k], test.masks[k], np.zeros_like(test.masks[k]))]
        curves[target] = {}
        val_curves[target] = []
        for scenario, label in SCENARIO_LABELS.items():
            uses_f = REGISTRY[scenario].uses_label_fraction
            for f in sorted(fractions, reverse=True) if uses_f else [0.0]:
                run = run_dirs.get((target, scenario, f, s0))
                if run is not None and (run / "history.csv").is_file():
                    name = label + (f" f={f:g}" if uses_f else "")
                    name += f" ({REGISTRY[scenario].validates_on} val)"
                    val_curves[target].append((scenario, name, f, read_history(run)))
            f = f0 if uses_f else 0.0
            run = run_dirs.get((target, scenario, f, s0))
            if run is None or not (run / "model.json").is_file():
                continue
            pred = predict_masks(load_segmenter(run), test.images[k : k + 1])[0]
            panels[target].append((label, test.images[k], test.masks[k], pred))
            curves[target][label] = read_history(run)
    out["overlays"] = overlays(fig_dir / "overlays.png", panels)
    out["loss_curves"] = loss_curves(fig_dir / "loss_curves.png", curves)
    out["validation_curves"] = validation_curves(fig_dir / "validation_curves.png", val_curves)
    return out
