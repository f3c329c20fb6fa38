"""A segmenter run's history: ``history.csv`` and the loss / validation-Dice plot."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from mrict.runtime.atomic import atomic_path, atomic_write_text


def plot_history(history: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Training loss (left axis) and validation Dice (right axis) against iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    its = [h["iteration"] for h in history if not math.isnan(h["train_loss"])]
    ax.plot(its, [h["train_loss"] for h in history if not math.isnan(h["train_loss"])], "C0-")
    ax.set_xlabel("iteration")
    ax.set_ylabel("train loss (Dice + BCE)", color="C0")
    val = [(h["iteration"], h["val_dice"]) for h in history if not math.isnan(h["val_dice"])]
    if val:
        ax2 = ax.twinx()
        ax2.plot([v[0] for v in val], [v[1] for v in val], "C1o-")
        ax2.set_ylabel("validation Dice", color="C1")
        ax2.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())


def write_history(history: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["iteration", "train_loss", "val_dice", "lr"])
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())
