"""Scenario (5), self-training, inside a tiny study: it starts from scenario (3)'s trained
segmenter, pseudo-labels every target train slice without reading the target masks,
trains on translated source + the confident pseudo-labels, is selected on translated
source val, and reports its validation Dice next to its test Dice."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import mrict.study.jobs as study_jobs
import mrict.study.run as study_run
from mrict.study.scenarios import SELECTION


def test_self_training_end_to_end(
    tmp_path: Path, monkeypatch, tiny_presets, tiny_phantom: Path
) -> None:
    tiny_presets(
        monkeypatch,
        seg={
            "iterations": 3,
            # a 3-step teacher is unsure everywhere: keep every slice (uncertain pixels
            # never outnumber the not-background ones) to exercise the whole path
            "pseudo_max_uncertain": 1.0,
        },
    )
    data = tiny_phantom
    calls: dict[str, dict] = {}
    real = study_jobs.train_segmenter

    def spy(train, val, out, cfg, seed, **kw):
        calls[Path(out).parent.name] = {"train": train, "val": val, "cfg": cfg, **kw}
        return real(train, val, out, cfg, seed, **kw)

    monkeypatch.setattr(study_jobs, "train_segmenter", spy)
    study = study_run.run_study(
        data, tmp_path / "study", seeds=[0], label_fractions=[1.0], targets=["CT"], progress=False
    )
    assert list(calls) == [
        "target_only_f1",
        "source_only",
        "translated",
        "target_translated_f1",
        "self_training",
    ]
    st, tr = calls["self_training"], calls["translated"]
    run_dir = study / "runs" / "CT" / "self_training" / "seed0"
    with np.load(run_dir / "pseudo_labels.npz") as z:
        masks, keep = z["masks"], z["keep"]
    info = json.loads((run_dir / "pseudo_labels.json").read_text())
    assert info["teacher"] == str(study / "runs" / "CT" / "translated" / "seed0")
    assert info["slices"] == len(keep) and info["kept"] == int(keep.sum())
    # every target train slice was pseudo-labelled; the masks are the pseudo-labels
    main = st["train"]
    ct_train = calls["target_only_f1"]["train"]
    assert main.modality == "CT" and main.patient_ids == ct_train.patient_ids
    assert np.array_equal(main.images, ct_train.images)
    assert np.array_equal(main.masks, masks) and np.array_equal(main.has_mask, keep)
    # translated source is the extra data; selection on translated source val
    assert st["extra"] == [tr["train"]] and st["val"] is tr["val"]
    assert st["init"] is None  # retrained from scratch
    assert set(st["val"].patient_ids).isdisjoint(ct_train.patient_ids)
    with (study / "per_patient.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["scenario"] == "self_training"]
    assert rows and all(r["selected_on"] == SELECTION["self_training"] for r in rows)
    meta = json.loads((run_dir / "model.json").read_text())["meta"]
    want = meta["best_val_dice"]
    assert all(
        float(r["val_dice"]) == pytest.approx(want, rel=1e-5) if want is not None else True
        for r in rows
    )
    assert (study / "figures" / "validation_curves.png").is_file()
