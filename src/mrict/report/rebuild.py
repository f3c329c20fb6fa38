"""``mrict report STUDY``: rebuild ``report.html`` from a study's ``results.json`` alone.

The figures that need only the results (the metrics bars) are drawn again; the figures that
need trained models (sample translations, overlays, training and validation curves) are
reused from ``STUDY/figures/`` when they are there and left out of the page when not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mrict.errors import MrictError

RESULTS = "results.json"
#: figures drawn by the study from its models; reused as they are
MODEL_FIGURES = ("sample_translations", "overlays", "loss_curves", "validation_curves")


def read_results(study: Path) -> dict[str, Any]:
    """The study's results document; one-line errors for a missing or damaged file."""
    path = study / RESULTS
    if not path.is_file():
        raise MrictError(f"no {RESULTS} here (not a finished mrict study)", study)
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MrictError(f"cannot read the study results ({exc})", path) from exc
    if not isinstance(doc, dict) or not {"info", "summary", "tests"} <= set(doc):
        raise MrictError("not an mrict study results file (info, summary, tests missing)", path)
    return doc


def rebuild_report(study: str | Path) -> Path:
    """Redraw the results figures and rewrite ``STUDY/report.html``; return its path."""
    from mrict.report.figures import segmentation_metrics
    from mrict.report.html import write_report

    study = Path(study)
    doc = read_results(study)
    fig_dir = study / "figures"
    fig_dir.mkdir(exist_ok=True)
    figures: dict[str, Path] = {
        name: fig_dir / f"{name}.png"
        for name in MODEL_FIGURES
        if (fig_dir / f"{name}.png").is_file()
    }
    if doc["summary"]:
        figures["segmentation_metrics"] = segmentation_metrics(
            fig_dir / "segmentation_metrics.png", doc["summary"]
        )
    return write_report(study / "report.html", doc, figures)
