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

FIGURES = (
    "sample_translations",
    "segmentation_metrics",
    "overlays",
    "loss_curves",
    "validation_curves",
)


def test_study_end_to_end(tmp_path: Path, capsys, monkeypatch, tiny_presets, simulated) -> None:
    # tiny networks through the real CLI path (the quick presets are what `mrict demo` uses)
    tiny_presets(
        monkeypatch,
        seg={"channels": (8, 16, 32), "augment": True},
        gan={"ngf": 8, "ndf": 8, "select_every": 1},
    )
    data = simulated(size=48)
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
        "--workers",
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
    assert doc["info"]["segmentation_processes"]["workers"] == 2
    runs = doc["info"]["runs"]  # (2) for one target is (1) at 100% labels for the other
    assert runs["MR/source_only/seed0"]["same_segmenter_as"] == "CT/target_only_f1/seed0"
    assert runs["CT/source_only/seed0"]["same_segmenter_as"] == "MR/target_only_f1/seed0"
    assert (study / "runs/MR/source_only/seed0/model.safetensors").read_bytes() == (
        study / "runs/CT/target_only_f1/seed0/model.safetensors"
    ).read_bytes()
    splits = doc["info"]["splits"]
    for m in ("CT", "MR"):  # the test patients are exactly those scored
        scored = {r["patient"] for r in doc["per_patient"] if r["target"] == m}
        assert scored == set(splits[m]["test"])
        assert not scored & set(splits[m]["train"])
    assert {t["a"] for t in doc["tests"]} == {"target_translated", "translated", "self_training"}
    assert doc["translation"] is not None and "mr2ct" in doc["translation"]
    # the translator was checked on paired_val and retrained while it lost the tumour
    check = doc["info"]["translator_check"]
    attempts = check["attempts"]
    assert 1 <= len(attempts) <= check["tries"] == 3
    assert [a["seed"] for a in attempts] == list(range(len(attempts)))
    assert all(a["checked_on"] == "paired_val" for a in attempts)
    assert all(a["carried"] is False for a in attempts[:-1])
    assert doc["info"]["gan_run"] == attempts[check["chosen"]]["run"]
    assert "Translator check on the paired validation set" in (study / "report.html").read_text()
    page = (study / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(FIGURES)
    assert "Conclusion" in page and "Wilcoxon" in page and 'src="http' not in page
    first = page.split("data:image/png;base64,")[1].split('"')[0]
    assert Image.open(io.BytesIO(base64.b64decode(first))).size[0] > 100
    # a second study reuses the trained CycleGAN and refuses bad inputs
    assert run(["study", str(tmp_path / "missing"), "--out", str(tmp_path / "s2")]) == 2
    assert "not found" in capsys.readouterr().err
    assert run([*argv[:3], str(tmp_path / "s3"), "--label-fraction", "2"]) == 2
