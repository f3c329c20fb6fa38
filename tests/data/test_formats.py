"""Reading and writing DICOM, NIfTI and raster slices in native units."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from mrict.data.io import read_slices, write_dicom, write_like, write_nifti
from mrict.data.raster_io import native_to_stored, write_png
from mrict.errors import MrictError


def _ct_dataset(
    hu: np.ndarray, *, intercept: float = -1024, instance: int = 1, z: float = 0.0
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientID = "SER01"
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = intercept
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelData = (hu - intercept).astype(np.uint16).tobytes()
    return ds


def test_series_with_intercept_is_read_in_hu_and_sorted_by_position(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    # written in scrambled order: file names and instance numbers disagree with positions
    for name, z, value in [("a.dcm", 20.0, 40), ("b.dcm", 0.0, -1000), ("c.dcm", 10.0, 1500)]:
        hu = np.full((8, 8), value, dtype=np.int32)
        _ct_dataset(hu, instance=int(30 - z), z=z).save_as(series / name, enforce_file_format=True)
    slices = read_slices(series, "CT")
    assert [float(s.pixels.mean()) for s in slices] == [-1000.0, 1500.0, 40.0]
    assert {s.patient_id for s in slices} == {"SER01"}


def test_rle_compressed_dicom_decodes_to_hu(tmp_path):
    hu = np.arange(-1024, -1024 + 64 * 4, 4, dtype=np.int32).reshape(8, 8)
    ds = _ct_dataset(hu)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "rle.dcm").file_meta.TransferSyntaxUID == RLELossless
    (s,) = read_slices(tmp_path / "rle.dcm", "CT")
    np.testing.assert_array_equal(s.pixels, hu)


def test_jpeg2000_compressed_dicom_decodes(tmp_path):
    from pydicom.uid import JPEG2000Lossless

    hu = np.arange(0, 64 * 16, 16, dtype=np.int32).reshape(8, 8) - 1024
    ds = _ct_dataset(hu)
    try:
        ds.compress(JPEG2000Lossless)
    except Exception as exc:  # encoder plugin missing: decoding is what matters here
        pytest.skip(f"no JPEG 2000 encoder: {exc}")
    ds.save_as(tmp_path / "j2k.dcm", enforce_file_format=True)
    (s,) = read_slices(tmp_path / "j2k.dcm", "CT")
    np.testing.assert_array_equal(s.pixels, hu)


def test_monochrome1_mr_is_inverted_and_multiframe_split(tmp_path):
    ds = _ct_dataset(np.zeros((4, 4), np.int32), intercept=0)
    ds.Modality = "MR"
    ds.PhotometricInterpretation = "MONOCHROME1"
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.BitsStored = 12
    ds.HighBit = 11
    frames = np.stack([np.full((4, 4), 100, np.uint16), np.full((4, 4), 4000, np.uint16)])
    ds.NumberOfFrames = 2
    ds.PixelData = frames.tobytes()
    ds.save_as(tmp_path / "mf.dcm", enforce_file_format=True)
    slices = read_slices(tmp_path / "mf.dcm", "MR")
    assert len(slices) == 2
    assert slices[0].pixels[0, 0] == 4095 - 100 and slices[1].pixels[0, 0] == 4095 - 4000


def test_dicom_round_trip_keeps_hu_and_marks_derived(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1024, 2500, (16, 20))
    write_dicom(tmp_path / "src.dcm", hu, modality="CT", patient_id="P1", derived=False)
    (src,) = read_slices(tmp_path / "src.dcm", "CT")
    assert np.abs(src.pixels - hu).max() <= 0.5
    out = write_like(
        [src], [src.pixels + 10], tmp_path / "out", modality="CT", description="mrict test"
    )
    back = pydicom.dcmread(out[0])
    assert list(back.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert back.SeriesDescription == "mrict test"
    assert back.PatientID == "P1"
    assert back.SOPInstanceUID != src.meta["header"].SOPInstanceUID
    assert back.SeriesInstanceUID != src.meta["header"].SeriesInstanceUID
    assert back.StudyInstanceUID == src.meta["header"].StudyInstanceUID
    (again,) = read_slices(out[0], "CT")
    assert np.abs(again.pixels - (hu + 10)).max() <= 1.0


def test_nifti_is_reoriented_and_written_back_with_same_affine(tmp_path):
    import nibabel as nib

    vol = np.zeros((6, 5, 4), np.float32)  # stored with x and y flipped (LPS-like)
    vol[0, 0, 0] = 7.0  # the most right and most anterior voxel of the lowest slice
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "P9.nii.gz")
    slices = read_slices(tmp_path / "P9.nii.gz", "MR")
    assert len(slices) == 4 and slices[0].patient_id == "P9"
    # canonical RAS: x (cols) ascending to the right, y (rows) anterior at the top
    assert slices[0].pixels.shape == (5, 6)
    assert slices[0].pixels[0, -1] == 7.0  # top row = anterior, last column = right
    assert slices[0].pixels.sum() == 7.0
    write_like(
        slices, [s.pixels * 2 for s in slices], tmp_path / "out", modality="MR", description="x"
    )
    out = nib.load(tmp_path / "out" / "P9.nii.gz")
    np.testing.assert_allclose(out.affine, affine)
    np.testing.assert_allclose(np.asarray(out.dataobj), vol * 2)


def test_png_bit_depths_rgb_and_ct_convention(tmp_path):
    hu = np.array([[-1024.0, 0.0], [40.0, 3000.0]])
    write_png(tmp_path / "ct16.png", native_to_stored(hu, 16, "CT"), bits=16)
    (s16,) = read_slices(tmp_path / "ct16.png", "CT")
    np.testing.assert_array_equal(s16.pixels, hu)
    write_png(tmp_path / "ct8.png", native_to_stored(hu, 8, "CT"), bits=8)
    (s8,) = read_slices(tmp_path / "ct8.png", "CT")
    assert np.abs(s8.pixels - hu).max() <= 4024 / 255 / 2 + 1e-3
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    (g,) = read_slices(tmp_path / "rgb.png", "MR")
    assert g.pixels.shape == (4, 4) and abs(g.pixels[0, 0] - 0.299 * 200) < 1e-3
    out = write_like([s16], [s16.pixels], tmp_path / "o", modality="CT", description="")
    assert Image.open(out[0]).mode.startswith("I")  # 16-bit kept


def test_write_dicom_is_deterministic_with_entropy(tmp_path):
    img = np.full((4, 4), 50.0)
    a = write_dicom(
        tmp_path / "a.dcm", img, modality="MR", patient_id="X", uid_entropy=["seed", "1"]
    )
    b = write_dicom(
        tmp_path / "b.dcm", img, modality="MR", patient_id="X", uid_entropy=["seed", "1"]
    )
    assert a.read_bytes() == b.read_bytes()


def test_nifti_4d_refused(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.float32), np.eye(4)), tmp_path / "v.nii")
    with pytest.raises(MrictError, match="expected 2-D or 3-D"):
        read_slices(tmp_path / "v.nii")


def test_write_nifti_round_trip_int16(tmp_path):
    vol = np.random.default_rng(1).uniform(-1000, 2000, (3, 8, 9))
    write_nifti(tmp_path / "ct.nii.gz", vol, dtype="int16")
    back = np.stack([s.pixels for s in read_slices(tmp_path / "ct.nii.gz", "CT")])
    assert np.abs(back - vol).max() <= 0.5
