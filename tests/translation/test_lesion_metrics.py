"""Lesion-level translation metrics: regions, per-region figures on hand-made images, the
segmenter Dice, paired loading with masks and the end-to-end evaluation with its report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from mrict.cli import run as cli
from mrict.data.datasets import SliceSet
from mrict.data.io import write_dicom
from mrict.data.raster_io import native_to_stored, write_png
from mrict.errors import MrictError
from mrict.translation import lesion_metrics as LM
from mrict.translation.config import GanConfig
from mrict.translation.evaluate import evaluate_translation, find_paired_dir, load_paired
from mrict.translation.networks import build_models
from mrict.translation.trainer import save_generators

SIZE = 64
C = 32  # centre of the disc phantom


def disc_phantom(gap: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GT CT (HU): scalp ring 26-29 px (45 HU), skull ring 22-26 px (1500 HU), brain disc
    < 22 px (30 HU), tumour disc of radius 4 px at (32, 40) (80 HU); returns (ct, tumour,
    radius map). ``gap``: a 5 px gap in the skull at the left, filled with scalp."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - C, xx - C)
    ct = np.full((SIZE, SIZE), -1000.0)
    ct[r < 29] = 45.0
    ct[r < 26] = 1500.0
    ct[r < 22] = 30.0
    tumour = np.hypot(yy - C, xx - 40) < 4
    ct[tumour] = 80.0
    if gap:
        ct[(np.abs(yy - C) <= 2) & (xx < C) & (r >= 22) & (r < 26)] = 45.0
    return ct, tumour, r


def test_regions_on_disc_phantom() -> None:
    ct, tumour, r = disc_phantom()
    reg = LM.lesion_regions(ct, tumour)
    assert np.array_equal(reg.head, r < 29)
    assert np.array_equal(reg.bone, (r >= 22) & (r < 26))
    assert np.array_equal(reg.tumour, tumour)
    grown = ndimage.binary_dilation(tumour, LM._disc(1))
    assert not (reg.brain & grown).any()  # tumour and its 1 px margin excluded
    assert not reg.brain[r >= 21].any()  # eroded away from the inner table, no scalp
    yy, xx = np.mgrid[:SIZE, :SIZE]
    far = np.hypot(yy - C, xx - 40) >= 6
    assert reg.brain[(r < 19) & far].all()
    d = ndimage.distance_transform_edt(~tumour)
    assert reg.ring.any() and not (reg.ring & ~reg.brain).any()
    assert (d[reg.ring] > 1).all() and (d[reg.ring] <= 4.5).all()
    assert not (reg.bone & reg.brain).any()


def test_open_skull_falls_back_to_the_hull() -> None:
    closed = LM.lesion_regions(*disc_phantom()[:2])
    ct, tumour, r = disc_phantom(gap=True)
    # filling the open ring alone finds no cavity
    skull = LM._close(ct > 300, LM.SKULL_CLOSE_PX)
    assert ndimage.binary_fill_holes(skull).sum() == skull.sum()
    reg = LM.lesion_regions(ct, tumour)
    inter, union = (reg.brain & closed.brain).sum(), (reg.brain | closed.brain).sum()
    assert inter / union > 0.97
    assert not reg.brain[r >= 25].any()  # no scalp outside the chord across the gap


def test_convex_hull_mask_of_a_square_outline() -> None:
    m = np.zeros((12, 12), bool)
    m[2, 2:9] = m[8, 2:9] = m[2:9, 2] = m[2:9, 8] = True
    m[4:6, 8] = False  # open side
    hull = LM.convex_hull_mask(m)
    assert hull[2:9, 2:9].all() and hull.sum() == 49
    assert not LM.convex_hull_mask(np.eye(5, dtype=bool)).any()  # collinear


def _metrics(pred: np.ndarray, ct: np.ndarray, tumour: np.ndarray | None, modality="CT"):
    ref = disc_phantom()[0]
    return LM.lesion_metrics([pred], [ct], [LM.lesion_regions(ref, tumour)], modality)


def test_tumour_offset_only_shows_in_the_tumour() -> None:
    ct, tumour, _ = disc_phantom()
    pred = ct.copy()
    pred[tumour] += 10.0
    m = _metrics(pred, ct, tumour)
    assert m["mae_tumour_hu"] == pytest.approx(10.0)
    assert m["mae_brain_hu"] == 0.0 and m["mae_bone_hu"] == 0.0 and m["mae_ring_hu"] == 0.0
    assert m["tumour_median_hu_pred"] == 90.0 and m["tumour_median_hu_gt"] == 80.0
    assert m["brain_median_hu_gt"] == 30.0
    assert m["tumour_to_brain_contrast_hu_gt"] == 50.0
    assert m["tumour_to_brain_contrast_hu_pred"] == 60.0
    assert m["tumour_to_ring_contrast_hu_gt"] == 50.0
    assert m["contrast_ratio"] == pytest.approx(1.2)
    assert m["n_tumour_slices"] == 1 and m["n_tumour_px"] == int(tumour.sum())


def test_contrast_ratio_and_bone() -> None:
    ct, tumour, _ = disc_phantom()
    pred = ct.copy()
    pred[tumour] = 130.0  # contrast 100 HU vs 50 HU
    pred[ct > 300] = 650.0  # skull too dark
    m = _metrics(pred, ct, tumour)
    assert m["contrast_ratio"] == pytest.approx(2.0)
    assert m["bone_mean_hu_pred"] == pytest.approx(650.0)
    assert m["bone_mean_hu_gt"] == pytest.approx(1500.0)
    assert m["mae_bone_hu"] == pytest.approx(850.0)
    assert m["mae_tumour_hu"] == pytest.approx(50.0) and m["mae_brain_hu"] == 0.0


def test_highpass_constant_is_zero_checkerboard_is_its_amplitude() -> None:
    ct, tumour, _ = disc_phantom()
    reg = LM.lesion_regions(ct, tumour)
    hp = LM.highpass(np.full(ct.shape, 30.0), reg.brain)
    assert np.abs(hp).max() < 1e-9
    yy, xx = np.mgrid[:SIZE, :SIZE]
    checker = np.where((yy + xx) % 2 == 0, 30.0, -30.0)
    pred = ct + np.where(reg.brain, checker, 0.0)
    m = _metrics(pred, ct, tumour)
    assert m["brain_highpass_sd_hu_gt"] < 1e-9  # constant brain
    assert 27.0 < m["brain_highpass_sd_hu_pred"] <= 30.5
    assert m["mae_brain_hu"] == pytest.approx(30.0)
    # skull and tumour next to the brain do not leak into the smoothing
    assert LM.highpass(ct, reg.brain)[reg.brain].std() < 1e-9


def test_brain_texture_is_split_into_interior_and_rim() -> None:
    """An artefact along the skull's inner table raises the rim's high-pass SD, not the
    interior's; texture everywhere raises both."""
    ct, tumour, _ = disc_phantom()
    reg = LM.lesion_regions(ct, tumour)
    inner = LM.brain_interior(reg.brain)
    rim = reg.brain & ~inner
    depth = ndimage.distance_transform_edt(reg.brain)
    assert inner.any() and rim.any() and not (inner & ~reg.brain).any()
    assert (depth[inner] > LM.BRAIN_INTERIOR_PX).all()
    assert (depth[rim] <= LM.BRAIN_INTERIOR_PX).all()
    yy, xx = np.mgrid[:SIZE, :SIZE]
    checker = np.where((yy + xx) % 2 == 0, 30.0, -30.0)
    m = _metrics(ct + np.where(rim, checker, 0.0), ct, tumour)
    assert m["brain_rim_highpass_sd_hu_pred"] > 20.0
    assert m["brain_interior_highpass_sd_hu_pred"] < 3.0
    assert m["brain_interior_highpass_sd_hu_gt"] < 1e-9 and m["brain_rim_highpass_sd_hu_gt"] < 1e-9
    assert (
        m["brain_rim_highpass_sd_hu_pred"]
        > m["brain_highpass_sd_hu_pred"]
        > m["brain_interior_highpass_sd_hu_pred"]
    )
    m = _metrics(ct + np.where(reg.brain, checker, 0.0), ct, tumour)
    assert 25.0 < m["brain_interior_highpass_sd_hu_pred"] <= 30.5
    assert 25.0 < m["brain_rim_highpass_sd_hu_pred"] <= 30.5


def test_mr_units_half_the_difference_and_same_contrast_rule() -> None:
    ct, tumour, _ = disc_phantom()
    truth = np.where(ct > 300, -0.8, 0.0)
    truth[tumour] = 0.6
    truth[ct < -500] = -1.0
    pred = truth.copy()
    pred[tumour] = 0.2
    m = _metrics(pred, truth, tumour, "MR")
    assert "mae_tumour_hu" not in m
    assert m["mae_tumour"] == pytest.approx(0.2)  # |0.2 - 0.6| / 2 in [0, 1] units
    assert m["tumour_to_brain_contrast_gt"] == pytest.approx(0.6)
    assert m["tumour_to_brain_contrast_pred"] == pytest.approx(0.2)
    assert m["contrast_ratio"] == pytest.approx(1 / 3)
    assert m["bone_mean_gt"] == pytest.approx(-0.8)


def test_pooling_over_slices() -> None:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    ct_a, _, _ = disc_phantom()
    small = np.hypot(yy - C, xx - 40) < 2  # 80 HU, 13 px
    big = np.hypot(yy - C, xx - 38) < 5  # 60 HU, 69 px
    ct_a = np.where(np.hypot(yy - C, xx - 40) < 4, 30.0, ct_a)
    ct_b, ct_c = ct_a.copy(), ct_a.copy()
    ct_a[small], ct_b[big] = 80.0, 60.0
    r = np.hypot(yy - C, xx - C)
    ct_c[r < 22] = 100.0  # a tumour-free slice with a brighter brain
    none = np.zeros_like(small)
    cts, masks = [ct_a, ct_b, ct_c], [small, big, none]
    regions = [LM.lesion_regions(c, m) for c, m in zip(cts, masks, strict=True)]
    m = LM.lesion_metrics(cts, cts, regions, "CT")
    assert m["n_tumour_slices"] == 2 and m["n_slices"] == 3
    assert m["tumour_median_hu_gt"] == 60.0  # pooled pixels, not the mean of slice medians
    assert m["brain_median_hu_gt"] == 30.0  # only the slices that contain tumour
    assert m["tumour_to_brain_contrast_hu_gt"] == 30.0
    assert m["n_brain_px"] == sum(int(g.brain.sum()) for g in regions)


def test_no_tumour_mask_gives_none_for_tumour_figures() -> None:
    ct, _, _ = disc_phantom()
    m = _metrics(ct + 5.0, ct, None)
    assert m["mae_tumour_hu"] is None and m["tumour_median_hu_pred"] is None
    assert m["contrast_ratio"] is None and m["n_tumour_slices"] == 0
    assert m["mae_brain_hu"] == pytest.approx(5.0)
    header, rows = LM.lesion_table({"model": m, "identity": m}, "CT")
    assert len(rows) == 3 and rows[-1][0] == "ground truth" and len(header) == len(rows[0])
    assert rows[0][1] == "n/a" and rows[0][2] == "5.0"


def test_dice_summary_by_hand() -> None:
    pred = np.zeros((4, 4, 4), np.uint8)
    true = np.zeros((4, 4, 4), np.uint8)
    true[0, :2, :2] = pred[0, :2, :2] = 1  # dice 1
    true[1, :2, :2] = 1  # missed: dice 0
    true[3, 0, :2] = 1  # slice 2 both empty (excluded)
    pred[3, 0, 1:3] = 1  # overlap 1 of 2 + 2: dice 0.5
    s = LM.dice_summary(pred, true, ["A", "A", "B", "B"])
    assert s["slice_dice"] == pytest.approx(0.5)
    assert s["dice"] == pytest.approx((8 / 12 + 0.5) / 2)  # patient A pools 2*4/(4+8)
    assert (s["n_patients"], s["n_slices"], s["n_tumour_slices"]) == (2, 4, 3)
    per_slice = LM.dice_summary(pred, true)
    assert per_slice["dice"] == pytest.approx(0.5) and per_slice["patients_both_empty"] == 1


def _disks(modality: str, n: int = 8, seed: int = 0) -> SliceSet:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    images = np.full((n, 32, 32), -0.8, np.float32)
    masks = np.zeros((n, 32, 32), np.uint8)
    for i in range(n):
        m = np.hypot(yy - rng.uniform(10, 22), xx - rng.uniform(10, 22)) < 5
        masks[i], images[i][m] = m, 0.6
    ids = [f"{modality}{i // 2:02d}" for i in range(n)]
    return SliceSet(modality, images, masks, np.ones(n, bool), ids)


@pytest.fixture(scope="module")
def segmenters(tmp_path_factory, tiny_seg_config) -> dict[str, Path]:
    """Two tiny U-Nets (2 steps): one on 'CT', one on 'MR' slices."""
    from mrict.segmentation.trainer import train_segmenter

    root = tmp_path_factory.mktemp("seg")
    cfg = tiny_seg_config(iterations=2, val_every=2)
    return {
        m: train_segmenter(_disks(m), None, root / m, cfg, seed=0, progress=False)
        for m in ("CT", "MR")
    }


def test_segmenter_dice_uses_the_public_predict(segmenters: dict[str, Path]) -> None:
    from mrict.segmentation.predict import load_segmenter, predict_masks

    data = _disks("CT", seed=5)
    seg = load_segmenter(segmenters["CT"])
    got = LM.segmenter_dice_on_translated(seg, data.images, data.masks, data.patient_ids)
    want = LM.dice_summary(predict_masks(seg, data.images), data.masks, data.patient_ids)
    assert got == want and got["n_slices"] == 8 and got["n_patients"] == 4
    with pytest.raises(ValueError):
        LM.segmenter_dice_on_translated(seg, data.images, data.masks[:3])
    with pytest.raises(MrictError):
        LM.segmenter_dice_on_translated(seg, data.images[:0], data.masks[:0])


def _write_paired(root: Path, n: int = 3, fmt: str = "png", masks: bool = True) -> None:
    from tests.conftest import brainlike  # noqa: PLC0415

    rng = np.random.default_rng(1)
    for i in range(n):
        ct, tumour = brainlike(rng, 32, "CT")
        mr = np.where(ct > 1000, 50.0, np.where(ct > -500, 600.0, 0.0))
        mr[tumour > 0] = 900.0
        for mod, img in (("CT", ct), ("MR", mr)):
            if fmt == "dicom":
                write_dicom(root / mod / f"P{i}.dcm", img, modality=mod, patient_id=f"P{i}")
            else:
                write_png(root / mod / f"P{i}.png", native_to_stored(img, 16, mod), bits=16)
        if masks:
            write_png(root / "mask" / f"P{i}.png", tumour * 255)


def test_find_paired_dir_splits(tmp_path: Path, make_dataset) -> None:
    data = make_dataset("png", patients=1, slices=1, size=32)
    assert find_paired_dir(data) is None and find_paired_dir(data, "val") is None
    _write_paired(data / "paired_test", n=1)
    assert find_paired_dir(data) == data / "paired_test"
    assert find_paired_dir(data, "val") is None
    _write_paired(data / "paired_val", n=1)
    assert find_paired_dir(data, "val") == data / "paired_val"
    assert find_paired_dir(data / "paired_val", "test") == data / "paired_val"  # folder itself
    with pytest.raises(MrictError):
        find_paired_dir(data, "train")


def test_load_paired_masks_match_by_stem(tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    _write_paired(root, n=2, fmt="dicom")  # images .dcm, masks .png
    mr, ct, labels, masks = load_paired(root, with_masks=True)
    assert len(mr) == len(ct) == len(masks) == 2 and labels[0] == "P0.dcm[0]"
    assert masks[0].dtype == np.uint8 and set(np.unique(masks[0])) <= {0, 1} and masks[0].any()
    assert len(load_paired(root)) == 3  # the old three-tuple without with_masks
    (root / "mask" / "P1.png").unlink()
    with pytest.raises(MrictError, match="no tumour mask"):
        load_paired(root, with_masks=True)
    bare = tmp_path / "bare"
    _write_paired(bare, n=1, masks=False)
    assert load_paired(bare, with_masks=True)[3] is None


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> Path:
    """Tiny randomly initialised generators (no training needed for the plumbing)."""
    run = tmp_path_factory.mktemp("gan")
    torch.manual_seed(0)
    gens, _ = build_models(4, 1, 4, 3)
    q = np.linspace(-1, 1, 101).tolist()
    save_generators(
        gens, run, GanConfig(image_size=32, ngf=4, n_blocks=1), {"histograms": {"MR": q, "CT": q}}
    )
    return run


def test_evaluate_translation_lesion_and_segmenter_dice(
    gan_run: Path, segmenters: dict[str, Path], make_dataset, capsys
) -> None:
    data = make_dataset("png", patients=3, slices=2, size=32)
    _write_paired(data / "paired_test", n=3)
    res = evaluate_translation(gan_run, data, segmenters=segmenters, write=False)
    assert res["paired_split"] == "test"
    lesion = res["lesion"]
    assert lesion["tumour_masks"] and "pooled" in lesion["aggregation"]
    _, ct_hu, _, masks = load_paired(data / "paired_test", with_masks=True)
    gt_median = float(
        np.median(np.concatenate([c[m > 0] for c, m in zip(ct_hu, masks, strict=True)]))
    )
    for direction, u in (("mr2ct", "_hu"), ("ct2mr", "")):
        assert set(lesion[direction]) == {"model", "identity", "histogram"}
        for row in lesion[direction].values():
            assert row["n_tumour_slices"] == 3 and row["n_brain_px"] > 0
            for key in ("mae_tumour", "mae_brain", "mae_bone"):
                assert row[f"{key}{u}"] is not None and row[f"{key}{u}"] >= 0
    assert lesion["mr2ct"]["model"]["tumour_median_hu_gt"] == pytest.approx(gt_median)
    seg = res["segmenter_dice"]
    assert seg["split"] == "val" and "val" in seg["protocol"]
    assert seg["mr2ct"]["label"] == (
        "Dice of a real-CT segmenter on translated MR slices (source masks)"
    )
    assert seg["ct2mr"]["source"] == "CT" and seg["ct2mr"]["target"] == "MR"
    for method in ("model", "identity", "histogram"):
        row = seg["mr2ct"][method]
        assert row["n_patients"] == 1 and row["n_slices"] == 2  # the one val patient

    from mrict.report.html import translation_tables

    page = "\n".join(translation_tables(res))
    assert "at the lesion" in page and "ground truth" in page
    assert "real-CT segmenter on translated MR" in page and "tumour-brain contrast" in page
    assert "paired test slices" in page

    argv = ["eval-translation", str(gan_run), str(data), "--segmenter-ct", str(segmenters["CT"])]
    assert cli([*argv, "--segmenter-split", "test"]) == 0
    out = capsys.readouterr().out
    assert "lesion-level" in out and "real-CT segmenter" in out and "test split" in out
    assert cli([*argv, "--segmenter-split", "train"]) == 2
    assert cli(["eval-translation", str(gan_run), str(data), "--paired-split", "train"]) == 2
    wrong = ["eval-translation", str(gan_run), str(data), "--segmenter-mr", str(segmenters["CT"])]
    assert cli(wrong) == 2 and "trained on CT" in capsys.readouterr().err
    paired_only = ["eval-translation", str(gan_run), str(data / "paired_test")]
    assert cli([*paired_only, "--segmenter-ct", str(segmenters["CT"])]) == 2


def test_evaluate_without_masks_and_report_without_lesion(gan_run: Path, tmp_path: Path) -> None:
    root = tmp_path / "d" / "paired_test"
    _write_paired(root, n=2, masks=False)
    res = evaluate_translation(gan_run, root.parent, write=False)
    assert not res["lesion"]["tumour_masks"]
    assert res["lesion"]["mr2ct"]["model"]["mae_tumour_hu"] is None
    assert res["lesion"]["mr2ct"]["model"]["mae_brain_hu"] is not None
    from mrict.report.html import translation_tables

    old = {k: v for k, v in res.items() if k != "lesion"}  # results.json of an older run
    assert "at the lesion" not in "".join(translation_tables(old))
    assert "No paired test data" in "".join(translation_tables(None))


@pytest.mark.parametrize(
    ("tumour_hu", "expected"),
    [(80.0, 1.0), (55.0, 0.5), (30.0, 0.0), (10.0, -0.4)],
)
def test_tumour_contrast_ratio_by_hand(tumour_hu: float, expected: float) -> None:
    """Real contrast 80 - 30 = 50 HU; the translation's (tumour_hu - 30) over it."""
    ct, tumour, _ = disc_phantom()
    pred = ct.copy()
    pred[tumour] = tumour_hu
    reg = [LM.lesion_regions(ct, tumour)]
    assert LM.tumour_contrast_ratio([pred], [ct], reg) == pytest.approx(expected)
    # the same figure as the full metrics' contrast_ratio
    assert LM.lesion_metrics([pred], [ct], reg, "CT")["contrast_ratio"] == pytest.approx(expected)


def test_tumour_contrast_ratio_is_none_without_tumour() -> None:
    ct, tumour, _ = disc_phantom()
    reg = [LM.lesion_regions(ct, np.zeros_like(tumour))]
    assert LM.tumour_contrast_ratio([ct], [ct], reg) is None
