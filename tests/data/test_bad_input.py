"""Every bad input ends in one line naming the file, exit code 2, no traceback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mrict.cli import run
from mrict.data.datasets import load_modality
from mrict.data.io import write_dicom, write_nifti
from mrict.data.raster_io import write_png
from mrict.errors import MrictError


def _fails(capsys, argv, *needles):
    code = run(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_inspect_good_dataset_table_and_json(make_dataset, capsys):
    root = make_dataset("dicom", patients=2, slices=2, size=24)
    assert run(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert "CT" in out and "MR" in out and "HU" in out
    assert run(["inspect", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    ct = report["modalities"]["CT"]
    assert (ct["patients"], ct["slices"], ct["labelled_slices"]) == (2, 4, 4)
    assert ct["sizes"] == {"24x24": 4}
    assert ct["intensity_min"] < -900 and ct["intensity_max"] > 1500
    assert 0 < ct["mask_positive_fraction"] < 0.2
    assert report["problems"] == []


def test_missing_folder(tmp_path, capsys):
    _fails(capsys, ["inspect", str(tmp_path / "nope")], "nope", "not found")


def test_folder_with_no_images(tmp_path, capsys):
    (tmp_path / "CT" / "image_CT").mkdir(parents=True)
    (tmp_path / "CT" / "image_CT" / "notes.txt").write_text("hello")
    _fails(capsys, ["inspect", str(tmp_path)], "no image files")


def test_no_dataset_layout(tmp_path, capsys):
    (tmp_path / "random").mkdir()
    _fails(capsys, ["inspect", str(tmp_path)], "no data set found")


def test_corrupt_and_truncated_dicom(make_dataset, capsys):
    root = make_dataset("dicom", patients=2, slices=1)
    victim = root / "CT" / "image_CT" / "CT001_000.dcm"
    victim.write_bytes(victim.read_bytes()[:400])
    _fails(capsys, ["inspect", str(root)], "CT001_000.dcm")
    victim.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 50)
    _fails(capsys, ["inspect", str(root)], "CT001_000.dcm")


def test_not_an_image(make_dataset, capsys):
    root = make_dataset("png", patients=1, slices=1, modalities=("MR",))
    (root / "MR" / "image_MR" / "MR009_000.png").write_bytes(b"this is not a png at all")
    _fails(capsys, ["inspect", str(root)], "MR009_000.png", "not a readable image")


def test_mask_size_mismatch(make_dataset, capsys):
    root = make_dataset("png", patients=1, slices=1, size=16, modalities=("CT",))
    write_png(root / "CT" / "mask_CT" / "CT000_000.png", np.zeros((8, 8)))
    _fails(capsys, ["inspect", str(root)], "CT000_000.png", "differs from image size")


def test_non_binary_mask_and_threshold(make_dataset, capsys):
    root = make_dataset("png", patients=1, slices=1, size=16, modalities=("CT",))
    labels = np.zeros((16, 16))
    labels[2:5, 2:5], labels[8:12, 8:12] = 1, 2
    write_png(root / "CT" / "mask_CT" / "CT000_000.png", labels)
    _fails(
        capsys, ["inspect", str(root)], "mask_CT/CT000_000.png", "not binary", "--mask-threshold"
    )
    assert run(["inspect", str(root), "--mask-threshold", "1"]) == 0
    ct = load_modality(root, "CT", size=16, mask_threshold=1, progress=False)
    assert int(ct.masks.sum()) == 16  # only label 2 survives value > 1


def test_nan_pixels(tmp_path, capsys):
    vol = np.zeros((2, 8, 8), np.float32)
    vol[1, 3, 3] = np.nan
    write_nifti(tmp_path / "MR" / "image_MR" / "P1.nii.gz", np.nan_to_num(vol))
    import nibabel as nib

    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "MR" / "image_MR" / "P1.nii.gz")
    _fails(capsys, ["inspect", str(tmp_path)], "P1.nii.gz", "NaN")


def test_empty_modality(make_dataset, capsys):
    root = make_dataset("png", patients=1, slices=1, modalities=("MR", "CT"))
    shutil.rmtree(root / "CT" / "image_CT")
    (root / "CT" / "image_CT").mkdir()
    with pytest.raises(MrictError, match="holds no images"):
        load_modality(root, "CT", progress=False)


def test_skip_bad_reports_and_continues(make_dataset, capsys):
    root = make_dataset("dicom", patients=3, slices=1)
    (root / "MR" / "image_MR" / "MR001_000.dcm").write_bytes(b"garbage")
    with pytest.raises(MrictError, match="MR001_000.dcm"):
        load_modality(root, "MR", progress=False)
    warnings: list[str] = []
    mr = load_modality(root, "MR", skip_bad=True, progress=False, warn=warnings.append)
    assert mr.patients() == ["MR000", "MR002"]
    assert len(warnings) == 1 and "MR001_000.dcm" in warnings[0]
    assert run(["inspect", str(root), "--skip-bad"]) == 0
    assert "MR001_000.dcm" in capsys.readouterr().out


def test_image_without_mask_is_a_warning(make_dataset, capsys):
    root = make_dataset("png", patients=2, slices=1, modalities=("CT",))
    (root / "CT" / "mask_CT" / "CT001_000.png").unlink()
    assert run(["inspect", str(root), "--json"]) == 0
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert problems == [
        {
            "severity": "warning",
            "file": str(root / "CT" / "image_CT" / "CT001_000.png"),
            "problem": "image without mask",
        }
    ]


def test_absurd_declared_dicom_size_refused_before_allocation(tmp_path, capsys):
    path = tmp_path / "CT" / "image_CT" / "huge.dcm"
    write_dicom(path, np.zeros((4, 4)), modality="CT", patient_id="H")
    import pydicom

    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 60000
    ds.save_as(path, enforce_file_format=True)
    _fails(capsys, ["inspect", str(tmp_path)], "huge.dcm", "too large")
