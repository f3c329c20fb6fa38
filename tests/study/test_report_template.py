"""The report page's jinja2 template: shipped as package data, autoescaped, all sections."""

from __future__ import annotations

import fnmatch
import importlib.resources
import tomllib
from pathlib import Path
from typing import Any

from mrict.report.html import TEMPLATE, build_html, environment, write_report

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "<script>alert(1)</script>"
PNG = b"\x89PNG\r\n\x1a\n"


def _doc(**info: Any) -> dict[str, Any]:
    """A small hand-built results document: one target, two scenarios, one comparison."""
    row = {"target": "CT", "seeds": 2, "patients": 4, "label_fraction": 0.0}
    summary = [
        {**row, "scenario": "target_only", "label_fraction": 1.0, "dice_mean": 0.8},
        {**row, "scenario": "source_only", "dice_mean": 0.4},
        {**row, "scenario": "translated", "dice_mean": 0.6},
    ]
    test = {"target": "CT", "a": "translated", "b": "source_only", "label_fraction": 0.0}
    tests = [{**test, "n": 4, "mean_diff": 0.2, "p": 0.125}]
    base = {
        "data": "/data/study",
        "gan_run": "/runs/gan",
        "preset": "quick",
        "timing_s": {"total": 12.0, "gan": 5.0, "segmentation": 7.0},
        "data_summary": {
            "CT": {
                "train": {"patients": 3, "slices": 30, "labelled_slices": 30, "tumour_slices": 9}
            }
        },
        "split_seed": 0,
        "seeds": [0, 1],
        "label_fractions": [1.0],
        "segmentation_config": {"image_size": 64},
        "gan_config": {"use_target_masks": False},
        "empty_counts": {"CT/target_only": {"both_empty": 2, "n_slices": 10}},
        "platform": "test-platform",
    }
    return {"info": {**base, **info}, "summary": summary, "tests": tests}


def test_template_is_package_data() -> None:
    path = importlib.resources.files("mrict.report").joinpath("templates", TEMPLATE)
    assert path.is_file() and "</html>" in path.read_text(encoding="utf-8")
    # pyproject.toml ships it in wheels (the editable install reads it from src/)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = pyproject["tool"]["setuptools"]["package-data"]["mrict"]
    assert any(fnmatch.fnmatch(f"report/templates/{TEMPLATE}", g) for g in globs)
    env = environment()
    assert env.autoescape is True
    assert env.get_template(TEMPLATE).filename == str(path)


def test_doc_values_are_escaped(tmp_path: Path) -> None:
    doc = _doc(data=f"/data/{SCRIPT}", platform=SCRIPT, seeds=[SCRIPT])
    doc["summary"][1]["scenario"] = SCRIPT  # an unknown scenario shows its key as label
    doc["summary"][2]["target"] = SCRIPT  # ... and an odd target reaches the conclusion
    page = write_report(tmp_path / "report.html", doc, {}).read_text(encoding="utf-8")
    assert "<script>" not in page
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"<code>/data/{escaped}</code>" in page  # escaped by the template
    assert f"Platform: {escaped}." in page
    assert f'<td class="l">{escaped}</td>' in page  # escaped by _table
    assert f"<b>Target {escaped}.</b>" in page  # escaped by conclusion()


def test_page_sections(tmp_path: Path) -> None:
    figures = {}
    for name in ("segmentation_metrics", "overlays", "loss_curves"):
        figures[name] = tmp_path / f"{name}.png"
        figures[name].write_bytes(PNG)
    page = build_html(_doc(), figures)
    assert page.startswith("<!DOCTYPE html><html lang='en'>")
    assert page.endswith("</p>\n</body></html>")
    headings = [
        "Conclusion",
        "Results on the target test patients",
        "Statistics",
        "Predictions on test slices",
        "Translation",
        "Data",
        "Configuration",
        "Training curves",
    ]
    found = [line.split("<h2>")[1].split("</h2>")[0] for line in page.split("\n") if "<h2>" in line]
    assert found == headings
    assert page.count("data:image/png;base64,iVBORw0KGgo=") == 3
    assert 'alt="overlays"' in page and 'alt="validation curves"' not in page
    assert "<p><b>Target CT.</b> Trained on CT (100% of labels)" in page
    assert "total time 12 s (CycleGAN 5 s, segmenters 7 s)" in page
    assert "No paired test data" in page  # no translation metrics in the doc
    assert "source masks only" in page and "2 of 10 test-slice evaluations" in page
    assert "Seeds: [0, 1]; target label fractions: [1.0]" in page
    # without figures, their headings and images are left out
    bare = build_html(_doc(gan_config={"use_target_masks": True}), {})
    assert "<img" not in bare and "Training curves" not in bare and "Predictions" not in bare
    assert "also used the target modality" in bare
    assert "without tumour-aware terms" in build_html(_doc(gan_config={}), {})
