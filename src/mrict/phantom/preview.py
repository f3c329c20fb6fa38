"""A PNG montage of simulated patients: MRI, CT and the tumour mask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mrict.runtime.atomic import atomic_path


def save_preview(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per patient: MRI, CT (brain window 0-80 HU), CT (bone window), mask overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        mr, ct, mask = row["MR"], row["CT"], row["mask"]
        hi = np.percentile(mr, 99.5)
        panels = [
            (mr, "gray", 0, hi, f"{row['id']} MRI"),
            (ct, "gray", -10, 90, "CT (brain window)"),
            (ct, "gray", -1000, 2000, "CT (bone window)"),
            (mr, "gray", 0, hi, "tumour mask"),
        ]
        for c, (img, cmap, vmin, vmax, title) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax)
            if c == 3:
                ax.imshow(np.ma.masked_where(mask == 0, mask), cmap="autumn", alpha=0.5)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
