"""Segmenter inputs: CT through HU windows (one channel per window), MRI unchanged, the
same transform for real and translated CT in training, validation and prediction, and the
windows recorded in model.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import mrict.segmentation.predict as predict_module
import mrict.segmentation.trainer as trainer_module
from mrict.data.datasets import SliceSet
from mrict.data.intensity import hu_to_unit
from mrict.errors import MrictError
from mrict.segmentation.config import SegConfig
from mrict.segmentation.inputs import hu_window, input_channels, prepare_inputs
from mrict.segmentation.predict import load_segmenter, predict_masks
from mrict.segmentation.trainer import train_segmenter

TINY = dict(
    image_size=32,
    channels=(4, 8),
    num_res_units=1,
    batch_size=4,
    augment=False,
    iterations=2,
    val_every=1,
    device="cpu",
    schedule="mixed",
)


def ct_set(n: int = 6, seed: int = 0, prefix: str = "C") -> SliceSet:
    """CT slices in the network representation: soft tissue (~35 HU) with a denser disk
    (the mask) inside bone; 2 slices per patient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    hu = np.full((n, 32, 32), -1000.0)
    masks = np.zeros((n, 32, 32), np.uint8)
    for i in range(n):
        head = np.hypot(yy - 16, xx - 16)
        hu[i][head < 14] = 1500.0
        hu[i][head < 12] = 35.0
        cy, cx = rng.uniform(11, 21, 2)
        masks[i] = np.hypot(yy - cy, xx - cx) < 3
        hu[i][masks[i] > 0] = 70.0
    images = hu_to_unit(hu + rng.normal(0, 3, hu.shape)).astype(np.float32)
    ids = [f"{prefix}{i // 2}" for i in range(n)]
    return SliceSet("CT", images, masks, np.ones(n, bool), ids)


def test_hu_window_maps_known_hu_to_known_values() -> None:
    hu = np.array([[[-1024.0, -100.0, 50.0, 200.0, 1000.0]]])
    out = hu_window(hu_to_unit(hu).astype(np.float32), -100.0, 200.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [-1.0, -1.0, 0.0, 1.0, 1.0], atol=1e-3)
    cfg = SegConfig(ct_window=(-100.0, 200.0), ct_extra_windows=((-200.0, 1800.0),))
    x = prepare_inputs(hu_to_unit(hu).astype(np.float32), "CT", cfg)
    assert x.shape == (1, 2, 1, 5) and input_channels(cfg, "CT") == 2
    np.testing.assert_allclose(x[0, 1, 0], [-1.0, -0.9, -0.75, -0.6, 0.2], atol=1e-3)


def test_raw_window_and_mri_are_untouched() -> None:
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (3, 8, 8)).astype(np.float32)
    cfg = SegConfig(ct_extra_windows=((-200.0, 1800.0),))
    mr = prepare_inputs(images, "MR", cfg)
    assert mr.shape == (3, 1, 8, 8) and np.array_equal(mr[:, 0], images)
    assert input_channels(cfg, "MR") == 1
    raw = prepare_inputs(images, "CT", SegConfig(ct_window=None))
    assert np.array_equal(raw[:, 0], images)
    with pytest.raises(MrictError, match="lo < hi"):
        prepare_inputs(images, "CT", SegConfig(ct_window=(200.0, -100.0)))


def test_real_and_translated_ct_get_the_same_transform(tmp_path: Path, monkeypatch) -> None:
    """Training (target and extra sets), validation and prediction all go through
    prepare_inputs with the model's windows; equal images give equal inputs."""
    calls: list[tuple[str, np.ndarray, np.ndarray]] = []
    real = trainer_module.prepare_inputs

    def spy(images, modality, config):
        out = real(images, modality, config)
        calls.append((modality, np.asarray(images).copy(), out))
        return out

    monkeypatch.setattr(trainer_module, "prepare_inputs", spy)
    monkeypatch.setattr(predict_module, "prepare_inputs", spy)
    target = ct_set(6, seed=1)
    translated = ct_set(6, seed=1, prefix="S")  # same pixels, as if translated from MR
    cfg = SegConfig(**TINY)
    run = train_segmenter(
        target, ct_set(4, 2, "V"), tmp_path / "run", cfg, extra=translated, progress=False
    )
    predict_masks(run, target.images)
    assert len(calls) == 4 and {c[0] for c in calls} == {"CT"}
    (_, a, xa), (_, b, xb) = calls[0], calls[1]
    assert np.array_equal(a, b) and np.array_equal(xa, xb)
    assert np.array_equal(calls[3][2], xa)  # prediction sees what training saw
    assert xa.min() >= -1.0 and xa.max() <= 1.0
    assert np.array_equal(xa, hu_window(target.images, -100.0, 200.0)[:, None])


def test_windows_recorded_and_extra_channels_load(tmp_path: Path) -> None:
    cfg = SegConfig(**TINY, ct_extra_windows=((-200.0, 1800.0),))
    run = train_segmenter(ct_set(), None, tmp_path / "run", cfg, progress=False)
    meta = json.loads((run / "model.json").read_text())["meta"]
    assert meta["in_channels"] == 2
    assert meta["input"]["windows_hu"] == [[-100.0, 200.0], [-200.0, 1800.0]]
    seg = load_segmenter(run)
    assert seg.config.ct_window == (-100.0, 200.0)
    assert seg.config.ct_extra_windows == ((-200.0, 1800.0),)
    assert predict_masks(seg, ct_set(2, 5).images).shape == (2, 32, 32)


def test_model_without_window_keys_loads_as_raw_one_channel(tmp_path: Path) -> None:
    """A model.json written before input windows existed: CT was seen unwindowed."""
    cfg = SegConfig(**TINY, ct_window=None)
    run = train_segmenter(ct_set(), None, tmp_path / "run", cfg, progress=False)
    images = ct_set(2, 5).images
    before = predict_masks(run, images)
    sidecar = run / "model.json"
    doc = json.loads(sidecar.read_text())
    for key in ("ct_window", "ct_extra_windows"):
        del doc["meta"]["config"][key]
    for key in ("in_channels", "input"):
        del doc["meta"][key]
    sidecar.write_text(json.dumps(doc))
    seg = load_segmenter(run)
    assert seg.config.ct_window is None and seg.config.ct_extra_windows == ()
    assert np.array_equal(predict_masks(seg, images), before)
