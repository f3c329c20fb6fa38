"""Layout discovery, preparation, splits and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrict.data.datasets import SliceDataset, load_modality
from mrict.data.geometry import from_network, to_network
from mrict.data.intensity import hu_to_unit, normalise_mri, unit_to_hu
from mrict.data.layout import discover
from mrict.data.patient_ids import patient_id_from_name
from mrict.data.splits import check_disjoint, split_patients
from mrict.errors import MrictError


@pytest.mark.parametrize("fmt", ["dicom", "nifti", "png"])
def test_load_modality_every_format(make_dataset, fmt):
    root = make_dataset(fmt, patients=3, slices=2, size=24)
    ct = load_modality(root, "CT", size=16, progress=False)
    assert ct.images.shape == (6, 16, 16) and ct.images.dtype == np.float32
    assert ct.images.min() >= -1 and ct.images.max() <= 1
    assert ct.patients() == ["CT000", "CT001", "CT002"]
    assert ct.has_mask.all() and set(np.unique(ct.masks)) <= {0, 1} and ct.masks.any()
    # the brain (35 HU) sits at its window position
    assert np.isclose(np.median(ct.images[0][6:10, 6:10]), hu_to_unit(np.float32(35)), atol=0.02)
    mr = load_modality(root, "MR", size=16, progress=False)
    assert mr.patients() == ["MR000", "MR001", "MR002"]


def test_alternative_layout_and_unlabelled(make_dataset, tmp_path):
    root = make_dataset("png", patients=2, slices=1, modalities=("MR",))
    alt = tmp_path / "alt"
    (alt / "mri").mkdir(parents=True)
    (root / "MR" / "image_MR").rename(alt / "mri" / "images")
    index = discover(alt)
    assert len(index.modalities["MR"]) == 2
    assert all(item.mask is None for item in index.modalities["MR"])
    mr = load_modality(alt, "mri".upper()[:2], size=8, progress=False)
    assert not mr.has_mask.any() and len(mr.labelled()) == 0


def test_hu_window_is_exactly_invertible():
    hu = np.linspace(-1024, 3000, 4025, dtype=np.float64)
    np.testing.assert_allclose(unit_to_hu(hu_to_unit(hu)), hu, atol=1e-9)
    assert hu_to_unit(np.array([-2000.0, 5000.0])).tolist() == [-1.0, 1.0]
    t = torch.tensor([-1024.0, 988.0, 3000.0])
    assert torch.allclose(hu_to_unit(t, "linear"), torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6)


def test_mri_normalisation_is_robust_to_outliers():
    img = np.full((32, 32), 100.0)
    img[:16] = 300.0
    img[0, 0] = 1e6  # one hot pixel must not squash the image
    unit, (lo, hi) = normalise_mri(img)
    assert unit.min() == -1.0 and unit.max() == 1.0
    assert hi < 1e5 and (unit[20] == -1.0).all() and (unit[10] == 1.0).all()


def test_resize_geometry_round_trip():
    x = np.zeros((30, 40), np.float32)
    x[10:20, 10:30] = 1.0
    small = to_network(x, 64, -1.0)
    assert small.shape == (64, 64) and small.min() == -1.0  # padding uses the background
    back = from_network(small, (30, 40))
    assert back.shape == (30, 40) and np.abs(back[12:18, 12:28] - 1).max() < 0.05


def test_patient_id_rule():
    assert patient_id_from_name("P007_012.png") == "P007"
    assert patient_id_from_name("sub-01.nii.gz") == "sub-01"
    assert patient_id_from_name("case_3_0004.dcm") == "case_3"
    assert patient_id_from_name("/x/P12/0001.dcm") == "P12"


def test_splits_are_by_patient_and_seeded():
    ids = [f"P{i}" for i in range(20)] * 3
    a = split_patients(ids, seed=1)
    assert a == split_patients(ids, seed=1) and a != split_patients(ids, seed=2)
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(set(ids))
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (14, 3, 3)
    with pytest.raises(MrictError, match="'P1' appears in both"):
        check_disjoint({"train": ["P1", "P2"], "test": ["P1"]})


def test_augmentation_moves_image_and_mask_together(make_dataset):
    root = make_dataset("png", patients=1, slices=1, size=32, modalities=("CT",))
    ct = load_modality(root, "CT", size=32, progress=False)
    ds = SliceDataset(ct, augment=True, seed=3)
    changed = 0
    tumour_value = float(hu_to_unit(np.float32(20)))
    for epoch in range(12):
        ds.set_epoch(epoch)
        item = ds[0]
        img, mask = item["image"][0], item["mask"][0]
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        changed += int(not torch.equal(mask, torch.from_numpy(ct.masks[0]).float()))
        inside = img[mask > 0]
        if inside.numel() > 4:  # the tumour's intensity stays under the moved mask
            assert abs(float(inside.median()) - tumour_value) < 0.2
    assert changed > 0
    ds.set_epoch(5)
    assert torch.equal(ds[0]["image"], ds[0]["image"])  # same (seed, epoch, index) -> same draw
