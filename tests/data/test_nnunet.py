"""`mrict export-nnunet`: an nnU-Net v2 raw data set that follows nnU-Net's documented rules
(nnU-Net itself is not needed: the rules are checked here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from mrict.cli import run
from mrict.data.datasets import load_modality
from mrict.data.io import read_slices
from mrict.data.nifti_io import write_nifti
from mrict.data.nnunet import safe_id, slice_spacing
from mrict.data.splits import split_patients
from mrict.translation.config import GanConfig
from mrict.translation.networks import build_models
from mrict.translation.trainer import save_generators

ROW_MM, COL_MM, THICK_MM = 0.5, 0.6, 3.0


@pytest.fixture
def data(make_dataset, tmp_path: Path) -> Path:
    """5 CT patients (DICOM, anisotropic pixels) and 5 MR patients (NIfTI), 2 slices each."""
    root = tmp_path / "data"
    make_dataset("dicom", patients=5, slices=2, size=32, modalities=("CT",), root=root)
    make_dataset("nifti", patients=5, slices=2, size=32, modalities=("MR",), seed=1, root=root)
    for path in (root / "CT" / "image_CT").iterdir():
        ds = pydicom.dcmread(path)
        ds.PixelSpacing, ds.SliceThickness = [ROW_MM, COL_MM], THICK_MM
        ds.save_as(path, enforce_file_format=True)
    return root


@pytest.fixture
def gan(tmp_path: Path) -> Path:
    """A CycleGAN run of tiny, randomly initialised generators (split seed 0)."""
    torch.manual_seed(0)
    gens, _ = build_models(4, 1, 4, 3)
    save_generators(gens, tmp_path / "gan", GanConfig(image_size=32, ngf=4, n_blocks=1), {})
    return tmp_path / "gan"


_IMAGE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii\.gz$")


def check_nnunet_raw(folder: Path, dataset_id: int) -> dict:
    """nnU-Net v2's documented raw data set rules (dataset_format.md and its integrity
    check); returns dataset.json."""
    assert re.fullmatch(r"Dataset\d{3}_[A-Za-z0-9_-]+", folder.name), folder.name
    assert int(folder.name[7:10]) == dataset_id
    assert (folder / "imagesTr").is_dir() and (folder / "labelsTr").is_dir()
    meta = json.loads((folder / "dataset.json").read_text())
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        assert key in meta, key
    assert meta["file_ending"] == ".nii.gz"
    channels = {f"{int(k):04d}" for k in meta["channel_names"]}
    labels = sorted(meta["labels"].values())
    assert meta["labels"]["background"] == 0 and labels == list(range(len(labels)))
    cases: dict[str, set[str]] = {}
    for image in (folder / "imagesTr").iterdir():
        m = _IMAGE.match(image.name)
        assert m is not None, image.name
        cases.setdefault(m["case"], set()).add(m["channel"])
    assert all(found == channels for found in cases.values())
    label_names = {p.name for p in (folder / "labelsTr").iterdir()}
    assert label_names == {f"{c}{meta['file_ending']}" for c in cases}
    assert meta["numTraining"] == len(cases)
    for case in cases:
        seg = nib.load(folder / "labelsTr" / f"{case}.nii.gz")
        values = np.asarray(seg.dataobj)
        assert np.issubdtype(values.dtype, np.integer)
        assert set(np.unique(values).tolist()) <= set(labels)
        for ch in channels:
            img = nib.load(folder / "imagesTr" / f"{case}_{ch}.nii.gz")
            assert img.shape == seg.shape and len(img.shape) == 3 and img.shape[2] == 1
            np.testing.assert_allclose(img.affine, seg.affine)
            np.testing.assert_allclose(img.header.get_zooms(), seg.header.get_zooms())
            assert np.isfinite(np.asarray(img.dataobj, np.float64)).all()
    return meta


def test_export_train_split_real_and_translated(data: Path, gan: Path, tmp_path: Path) -> None:
    out = tmp_path / "nnUNet_raw"
    argv = ["export-nnunet", str(data), str(out), "--target", "CT", "--gan", str(gan)]
    assert run([*argv, "--dataset-id", "7"]) == 0
    folder = out / "Dataset007_MrictCTRealTranslated"
    assert sorted(p.name for p in out.iterdir()) == [folder.name]  # no staging left
    meta = check_nnunet_raw(folder, 7)
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, "tumour": 1}
    cases = json.loads((folder / "mrict_cases.json").read_text())["cases"]
    assert meta["numTraining"] == len(cases)
    assert meta["mrict"]["real_cases"] + meta["mrict"]["translated_cases"] == len(cases)
    assert "translated" in meta["description"]

    # train-split patients only: the same split (seed 0) train-seg and the CycleGAN use
    ct = split_patients(load_modality(data, "CT", size=32, progress=False).patients(), seed=0)
    mr = split_patients(load_modality(data, "MR", size=32, progress=False).patients(), seed=0)
    real = {c["patient"] for c in cases if c["origin"] == "real"}
    fake = {c["patient"] for c in cases if c["origin"] == "translated"}
    assert real == set(ct["train"]) and fake == set(mr["train"])
    for held_out in (*ct["test"], *ct["val"], *mr["test"]):
        assert held_out not in real | fake
        assert not any(held_out in c["case"] for c in cases)
    assert len({c["case"] for c in cases}) == len(cases) == 2 * (len(real) + len(fake))

    for c in cases:
        img = nib.load(folder / "imagesTr" / f"{c['case']}_0000.nii.gz")
        pixels = np.asarray(img.dataobj)
        assert pixels.dtype == np.int16 and pixels.min() >= -1024 and pixels.max() <= 3000
        source = [s for s in read_slices(data / c["file"]) if s.index == c["slice"]][0]
        back = read_slices(folder / "imagesTr" / f"{c['case']}_0000.nii.gz")[0]
        label = read_slices(folder / "labelsTr" / f"{c['case']}.nii.gz")[0]
        assert back.shape == label.shape == source.shape
        mask_file = data / c["file"].replace("image_", "mask_")
        if c["origin"] == "real":
            # HU as read from the source DICOM, source geometry and spacing, the source mask
            np.testing.assert_array_equal(back.pixels, np.rint(source.pixels))
            np.testing.assert_allclose(np.diag(img.affine)[:3], [COL_MM, ROW_MM, THICK_MM])
            mask_file = mask_file.with_suffix(".png")
            expected = read_slices(mask_file)[0].pixels > 0
        else:
            assert c["modality"] == "MR" and c["file"].startswith("MR/")
            expected = read_slices(mask_file)[c["slice"]].pixels > 0
            assert back.pixels.std() > 0
        np.testing.assert_array_equal(label.pixels, expected)


def test_export_guards_and_options(data: Path, gan: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "raw"
    base = ["export-nnunet", str(data), str(out)]
    assert run([*base, "--target", "CT", "--source", "translated"]) == 2
    assert "needs a CycleGAN run" in capsys.readouterr().err
    assert run([*base, "--target", "CT", "--source", "real", "--dataset-id", "1000"]) == 2
    assert "three digits" in capsys.readouterr().err
    assert run([*base, "--target", "XR", "--source", "real"]) == 2
    assert run([*base, "--target", "CT", "--gan", str(gan), "--seed", "3"]) == 2
    assert "split seed" in capsys.readouterr().err
    inside = ["export-nnunet", str(data), str(data / "CT"), "--target", "CT", "--source", "real"]
    assert run(inside) == 2
    assert "inside the input" in capsys.readouterr().err

    # --split all also exports the held-out patients; an existing folder needs --overwrite
    opts = ["--target", "CT", "--source", "real", "--split", "all", "--dataset-id", "12"]
    assert run([*base, *opts]) == 0
    folder = out / "Dataset012_MrictCTReal"
    meta = check_nnunet_raw(folder, 12)
    assert meta["numTraining"] == 10 and meta["mrict"]["translated_cases"] == 0
    assert run([*base, *opts]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err and err.count("\n") == 1
    (folder / "imagesTr" / "stale_0000.nii.gz").write_bytes(b"old")
    assert run([*base, *opts, "--overwrite"]) == 0
    assert not (folder / "imagesTr" / "stale_0000.nii.gz").exists()  # replaced as a whole
    check_nnunet_raw(folder, 12)
    # nnU-Net finds data sets by id: a second name for id 12 is refused
    assert run([*base, *opts, "--name", "Other"]) == 2
    assert "already used by Dataset012_MrictCTReal" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [folder.name]


def test_export_from_study_mr_target_and_interrupt(
    data: Path, gan: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text(json.dumps({"kind": "mrict-study", "data": str(data)}))
    (study / "results.json").write_text(
        json.dumps({"info": {"gan_run": str(gan), "split_seed": 0}})
    )
    out = tmp_path / "raw"
    argv = ["export-nnunet", str(study), str(out), "--target", "MR", "--source", "translated"]
    assert run([*argv, "--name", "brainMR"]) == 0
    folder = out / "Dataset501_brainMR"
    meta = check_nnunet_raw(folder, 501)
    assert meta["channel_names"] == {"0": "MRI"} and meta["mrict"]["real_cases"] == 0
    for image in (folder / "imagesTr").iterdir():
        assert np.asarray(nib.load(image).dataobj).dtype == np.float32

    # an interrupted export leaves neither a data set nor its staging folder behind
    import mrict.data.nnunet as nnunet

    calls = {"n": 0}
    write_case = nnunet._write_case

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        write_case(*args, **kwargs)

    monkeypatch.setattr(nnunet, "_write_case", failing)
    with pytest.raises(KeyboardInterrupt):
        nnunet.export_nnunet(
            study, out, target="MR", source="translated", dataset_id=9, progress=False
        )
    assert sorted(p.name for p in out.iterdir()) == [folder.name]


def test_spacing_and_safe_ids(tmp_path: Path) -> None:
    # a NIfTI whose first axis runs along y: rows (y) 0.9 mm, columns (x) 0.8 mm
    affine = np.array([[0, 0.8, 0, 0], [0.9, 0, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1]], float)
    write_nifti(tmp_path / "v.nii.gz", np.zeros((2, 6, 5), np.float32), affine)
    s = read_slices(tmp_path / "v.nii.gz")[0]
    assert slice_spacing(s) == pytest.approx((0.9, 0.8, 2.5))
    assert safe_id("CT001") == "CT001"
    odd = [safe_id(p) for p in ("a b", "a_b", "a/b", "Jöhn")]
    assert len(set(odd)) == 4 and all(re.fullmatch(r"[A-Za-z0-9-]+", i) for i in odd)
