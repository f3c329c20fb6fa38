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

import mrict.study.run as study_run
from mrict.phantom.simulate import simulate_dataset
from mrict.segmentation.config import SEG_PRESETS
from mrict.study.scenarios import SELECTION
from mrict.translation.config import GAN_PRESETS


def test_self_training_end_to_end(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(
        SEG_PRESETS,
        "quick",
        {
            "image_size": 32,
            "channels": (4, 8),
            "num_res_units": 1,
            "batch_size": 4,
            "iterations": 3,
            "val_every": 1,
            "patience": 0,
            "augment": False,
            # a 3-step teacher is unsure everywhere: keep every slice (uncertain pixels
            # never outnumber the not-background ones) to exercise the whole path
            "pseudo_max_uncertain": 1.0,
        },
    )
    monkeypatch.setitem(
        GAN_PRESETS,
        "quick",
        {
            "image_size": 32,
            "ngf": 4,
            "n_blocks": 1,
            "ndf": 4,
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
        size=32,
        fmt="png",
        progress=False,
        workers=1,
    )
    calls: dict[str, dict] = {}
    real = study_run.train_segmenter

    def spy(train, val, out, cfg, seed, **kw):
        calls[Path(out).parent.name] = {"train": train, "val": val, "cfg": cfg, **kw}
        return real(train, val, out, cfg, seed, **kw)

    monkeypatch.setattr(study_run, "train_segmenter", spy)
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
