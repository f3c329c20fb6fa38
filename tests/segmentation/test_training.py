"""U-Net training, selection, checkpoints, prediction and the segmentation commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mrict.cli import run
from mrict.data.datasets import SliceSet
from mrict.data.io import read_slices
from mrict.runtime.checkpoint import load_checkpoint
from mrict.segmentation.metrics import evaluate_masks
from mrict.segmentation.predict import load_segmenter, predict_masks, segment_path
from mrict.segmentation.trainer import train_segmenter


def disks(n: int, size: int = 32, seed: int = 0, prefix: str = "P") -> SliceSet:
    """Bright disks on a dark background; the mask is the disk (a trivially learnable task)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.full((n, size, size), -0.8, np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(8, size - 8, 2)
        m = np.hypot(yy - cy, xx - cx) < rng.uniform(3, 6)
        masks[i] = m
        images[i][m] = 0.6
    images += rng.normal(0, 0.05, images.shape).astype(np.float32)
    ids = [f"{prefix}{i // 4:02d}" for i in range(n)]
    return SliceSet("MR", images, masks, np.ones(n, bool), ids)


def test_training_learns_and_selects(tmp_path: Path, tiny_seg_config) -> None:
    cfg = tiny_seg_config(iterations=60, val_every=20, lr=1e-2)
    train, val, test = disks(32, seed=1), disks(8, seed=2, prefix="V"), disks(8, seed=3, prefix="T")
    out = train_segmenter(train, val, tmp_path / "run", cfg, seed=0, progress=False)
    for name in ("model.json", "model.safetensors", "history.csv", "loss_curve.png", "config.yaml"):
        assert (out / name).is_file(), name
    _, meta = load_checkpoint(out / "model")
    assert meta["best_iteration"] in (20, 40, 60)
    assert meta["modality"] == "MR"
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3
    pred = predict_masks(out, test.images)
    assert pred.dtype == np.uint8 and pred.shape == test.masks.shape
    dice = evaluate_masks(pred, test.masks, test.patient_ids)["summary"]["patient_dice"]
    assert dice > 0.6
    # selection: the saved model's validation Dice is the best one seen
    vals = [float(row.split(",")[2]) for row in history[1:]]
    assert meta["best_val_dice"] == pytest.approx(max(vals))
    # larger inputs are resized to the network and back
    big = np.kron(test.images, np.ones((2, 2), np.float32))
    assert predict_masks(out, big).shape == (8, 64, 64)


def test_same_seed_same_weights(tmp_path: Path, tiny_seg_config) -> None:
    cfg = tiny_seg_config(augment=True, iterations=4, val_every=2)
    data = disks(8)
    runs = [
        train_segmenter(data, None, tmp_path / f"r{i}", cfg, seed=s, progress=False)
        for i, s in enumerate((3, 3, 4))
    ]
    w = [load_checkpoint(r / "model")[0]["unet"] for r in runs]
    key = next(iter(w[0]))
    assert all(np.array_equal(w[0][k].numpy(), w[1][k].numpy()) for k in w[0])
    assert not np.array_equal(w[0][key].numpy(), w[2][key].numpy())


def test_unlabelled_only_is_refused(tmp_path: Path, tiny_seg_config) -> None:
    data = disks(4)
    data.has_mask[:] = False
    with pytest.raises(Exception, match="no training slices"):
        train_segmenter(data, None, tmp_path / "r", tiny_seg_config(iterations=2), progress=False)


@pytest.mark.parametrize("fmt", ["png", "dicom", "nifti"])
def test_segment_writes_input_format(
    make_dataset, tiny_seg_config, tmp_path: Path, fmt: str
) -> None:
    root = make_dataset(fmt=fmt, patients=1, slices=2, size=32, modalities=("CT",))
    cfg = tiny_seg_config(iterations=2, val_every=2)
    from mrict.data.datasets import load_modality

    data = load_modality(root, "CT", size=32, progress=False)
    run_dir = train_segmenter(data, None, tmp_path / "run", cfg, progress=False)
    assert load_segmenter(run_dir).modality == "CT"
    src = root / "CT" / "image_CT"
    written = segment_path(run_dir, src, tmp_path / "masks")
    inputs = sorted(p.name for p in src.iterdir())
    if fmt == "dicom":  # one DICOM SEG per series (here every file is its own series)
        inputs = sorted(name.replace(".dcm", "_seg.dcm") for name in inputs)
    assert sorted(p.name for p in written) == inputs
    for p in written:
        for s in read_slices(p):
            assert s.shape == (32, 32)
            assert set(np.unique(s.pixels)) <= {0.0, 1.0, 255.0}
    assert run(["segment", str(run_dir), str(src), str(src)]) == 2


def test_cli_train_evaluate_segment(make_dataset, tmp_path: Path, capsys) -> None:
    root = make_dataset(fmt="png", patients=4, slices=2, size=32, modalities=("MR",))
    out = tmp_path / "run"
    argv = ["train-seg", str(root), "--modality", "MR", "--out", str(out), "--seed", "1"]
    assert run([*argv, "--iterations", "3", "--image-size", "32"]) == 0
    assert (out / "model.json").is_file()
    assert run([*argv, "--iterations", "3"]) == 2  # refuses to overwrite a run
    assert "already holds a model" in capsys.readouterr().err
    assert run(["evaluate", str(out), str(root), "--json", str(tmp_path / "m.json")]) == 0
    text = capsys.readouterr().out
    assert "per patient: Dice" in text and "excluded" in text
    assert (tmp_path / "m.json").is_file()
    assert run(["evaluate", str(tmp_path / "nope"), str(root)]) == 2
    assert "not found" in capsys.readouterr().err
    assert run(["train-seg", str(root), "--modality", "XX", "--out", str(tmp_path / "x")]) == 2
