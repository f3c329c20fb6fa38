"""The whole study on a tiny simulated data set: CycleGAN, 5 scenarios x 2 targets, report."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from mrict.cli import run
from mrict.phantom.simulate import simulate_dataset
from mrict.segmentation.config import SEG_PRESETS
from mrict.translation.config import GAN_PRESETS

FIGURES = (
    "sample_translations",
    "segmentation_metrics",
    "overlays",
    "loss_curves",
    "validation_curves",
)


def test_study_end_to_end(tmp_path: Path, capsys, monkeypatch) -> None:
    # tiny networks through the real CLI path (the quick presets are what `mrict demo` uses)
    monkeypatch.setitem(
        SEG_PRESETS,
        "quick",
        {
            "image_size": 32,
            "channels": (8, 16, 32),
            "num_res_units": 1,
            "batch_size": 4,
            "iterations": 2,
            "val_every": 1,
            "patience": 0,
        },
    )
    monkeypatch.setitem(
        GAN_PRESETS,
        "quick",
        {
            "image_size": 32,
            "ngf": 8,
            "n_blocks": 1,
            "ndf": 8,
            "batch_size": 2,
            "iterations": 2,
            "checkpoint_every": 100,
            "sample_count": 1,
        },
    )
    data = simulate_dataset(
        tmp_path / "data",
        mri_patients=5,
        ct_patients=5,
        test_patients=2,
        slices_per_patient=2,
        size=48,
        fmt="png",
        progress=False,
        workers=1,
    )
    study = tmp_path / "study"
    argv = [
        "study",
        str(data),
        "--out",
        str(study),
        "--seeds",
        "1",
        "--label-fraction",
        "1.0",
        "--seg-iterations",
        "2",
        "--gan-iterations",
        "2",
    ]
    assert run(argv) == 0
    assert "report:" in capsys.readouterr().out
    for name in FIGURES:
        img = np.asarray(Image.open(study / "figures" / f"{name}.png").convert("L"), float)
        assert img.std() > 5, name  # not blank
    with (study / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["target"], r["scenario"]) for r in rows} == {
        (t, s)
        for t in ("CT", "MR")
        for s in ("target_only", "source_only", "translated", "target_translated", "self_training")
    }
    doc = json.loads((study / "results.json").read_text())
    splits = doc["info"]["splits"]
    for m in ("CT", "MR"):  # the test patients are exactly those scored
        scored = {r["patient"] for r in doc["per_patient"] if r["target"] == m}
        assert scored == set(splits[m]["test"])
        assert not scored & set(splits[m]["train"])
    assert {t["a"] for t in doc["tests"]} == {"target_translated", "translated", "self_training"}
    assert doc["translation"] is not None and "mr2ct" in doc["translation"]
    page = (study / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(FIGURES)
    assert "Conclusion" in page and "Wilcoxon" in page and 'src="http' not in page
    first = page.split("data:image/png;base64,")[1].split('"')[0]
    assert Image.open(io.BytesIO(base64.b64decode(first))).size[0] > 100
    # a second study reuses the trained CycleGAN and refuses bad inputs
    assert run(["study", str(tmp_path / "missing"), "--out", str(tmp_path / "s2")]) == 2
    assert "not found" in capsys.readouterr().err
    assert run([*argv[:3], str(tmp_path / "s3"), "--label-fraction", "2"]) == 2
