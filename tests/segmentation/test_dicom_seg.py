"""`mrict segment` on DICOM writes DICOM Segmentation objects that highdicom reads back."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from mrict import __version__
from mrict.cli import run
from mrict.data.datasets import load_modality, normalise
from mrict.data.dicom_seg import CATEGORY, PROPERTY, write_seg
from mrict.data.geometry import from_network, to_network
from mrict.data.io import read_slices, write_dicom
from mrict.data.raster_io import write_png
from mrict.segmentation.config import SegConfig
from mrict.segmentation.predict import predict_masks
from mrict.segmentation.trainer import train_segmenter

SHAPE = (40, 36)  # source size (rows, columns); the network runs at 32 x 32
SPACING = (0.8, 0.7)
ORIENTATION = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]  # coronal
DISKS = [(20, 18, 6), None, (12, 10, 5), (28, 24, 7), None]  # (row, col, radius) per slice


def _disk_series(folder: Path, mask_folder: Path | None = None) -> list[Path]:
    """A 5-slice MR series (one study, series, frame of reference) of bright disks."""
    study, series, frame = (pydicom.uid.generate_uid() for _ in range(3))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    paths = []
    for k, disk in enumerate(DISKS):
        mask = np.zeros(SHAPE, np.uint8)
        if disk is not None:
            mask = (np.hypot(yy - disk[0], xx - disk[1]) < disk[2]).astype(np.uint8)
        img = 100.0 + 800.0 * mask + rng.normal(0, 10, SHAPE)
        path = folder / f"IM{k:04d}.dcm"
        write_dicom(
            path,
            np.clip(img, 0, None),
            modality="MR",
            patient_id="SEG01",
            pixel_spacing=SPACING,
            slice_index=k,
            derived=False,
        )
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.ImageOrientationPatient = ORIENTATION
        ds.ImagePositionPatient = [-14.0, 2.5 * k, 20.0]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        if mask_folder is not None:
            write_png(mask_folder / f"IM{k:04d}.png", mask * 255)
    return paths


@pytest.fixture
def disk_run(tmp_path: Path) -> tuple[Path, Path]:
    """A segmenter that has (over)fitted the disk series, and the series folder."""
    import torch

    data = tmp_path / "data"
    images = data / "MR" / "image_MR"
    _disk_series(images, data / "MR" / "mask_MR")
    cfg = SegConfig(
        image_size=32,
        channels=(8, 16),
        num_res_units=1,
        batch_size=5,
        iterations=20,
        lr=1e-2,
        augment=False,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        slices = load_modality(data, "MR", size=32, progress=False)
        run_dir = train_segmenter(slices, None, tmp_path / "run", cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    return run_dir, images


def _expected_masks(run_dir: Path, images: Path) -> dict[str, np.ndarray]:
    """SOPInstanceUID -> the predict API's mask at source size, as `segment` computes it."""
    slices = read_slices(images, "MR")
    net = np.stack([to_network(normalise(s.pixels, "MR")[0], 32, -1.0) for s in slices])
    masks = predict_masks(run_dir, net)
    return {
        str(s.meta["header"].SOPInstanceUID): from_network(
            m.astype(np.float32), s.shape, nearest=True
        ).astype(np.uint8)
        for s, m in zip(slices, masks, strict=True)
    }


def test_segment_dicom_writes_seg_matching_predictions(
    disk_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, images = disk_run
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "masks"
    assert run(["segment", str(run_dir), str(images), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["IM0000_seg.dcm"]
    seg = hd.seg.segread(out / "IM0000_seg.dcm")
    sources = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p) for p in images.iterdir()}
    expected = _expected_masks(run_dir, images)
    assert set(expected) == set(sources)
    # the masks are not all alike, so a frame attached to the wrong slice would show
    assert len({m.tobytes() for m in expected.values()}) >= 3
    assert any(not m.any() for m in expected.values()) and any(m.any() for m in expected.values())

    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert (seg.Rows, seg.Columns) == SHAPE
    assert seg.StudyInstanceUID == next(iter(sources.values())).StudyInstanceUID
    assert seg.PatientID == "SEG01"
    assert seg.FrameOfReferenceUID == next(iter(sources.values())).FrameOfReferenceUID
    # every source instance is referenced, and nothing else
    refs = seg.ReferencedSeriesSequence
    assert (
        len(refs) == 1
        and refs[0].SeriesInstanceUID == next(iter(sources.values())).SeriesInstanceUID
    )
    assert {str(r.ReferencedSOPInstanceUID) for r in refs[0].ReferencedInstanceSequence} == set(
        sources
    )
    assert {str(u[2]) for u in seg.get_source_image_uids()} == set(sources)
    # one segment "tumour" with its codes and the algorithm that made it
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "tumour" and segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == CATEGORY.value
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == PROPERTY.value
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "mrict" and algorithm.AlgorithmVersion == __version__
    # frames: one per source slice with tumour pixels (empty ones omitted), each equal to the
    # predicted mask of the slice it references, at the source geometry
    frame_refs = [
        str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        for f in seg.PerFrameFunctionalGroupsSequence
    ]
    assert sorted(frame_refs) == sorted(u for u, m in expected.items() if m.any())
    uids = sorted(expected)
    pixels = seg.get_pixels_by_source_instance(
        uids, segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    assert pixels.shape == (len(uids), *SHAPE, 1)
    for uid, frame in zip(uids, pixels[..., 0], strict=True):
        np.testing.assert_array_equal(frame, expected[uid])
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == list(SPACING)
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    assert [float(v) for v in orientation.ImageOrientationPatient] == ORIENTATION
    for f, uid in zip(seg.PerFrameFunctionalGroupsSequence, frame_refs, strict=True):
        position = f.PlanePositionSequence[0].ImagePositionPatient
        assert [float(v) for v in position] == [float(v) for v in sources[uid].ImagePositionPatient]

    # same input and model (and SOURCE_DATE_EPOCH) -> the same bytes; inputs untouched
    again = tmp_path / "again"
    assert run(["segment", str(run_dir), str(images), str(again)]) == 0
    assert (again / "IM0000_seg.dcm").read_bytes() == (out / "IM0000_seg.dcm").read_bytes()
    # --seg-all-frames keeps a frame for every source slice
    full = tmp_path / "full"
    assert run(["segment", str(run_dir), str(images), str(full), "--seg-all-frames"]) == 0
    seg_full = hd.seg.segread(full / "IM0000_seg.dcm")
    assert seg_full.NumberOfFrames == len(uids)
    assert seg_full.SOPInstanceUID != seg.SOPInstanceUID
    np.testing.assert_array_equal(
        seg_full.get_pixels_by_source_instance(uids, segment_numbers=[1]), pixels
    )
    # the output guards still hold
    assert run(["segment", str(run_dir), str(images), str(out)]) == 2


def test_write_seg_empty_frames_and_legacy_sources(tmp_path: Path) -> None:
    # a series written without frame of reference, orientation or type 2 patient tags
    folder = tmp_path / "series"
    for k in range(3):
        path = folder / f"s{k}.dcm"
        write_dicom(path, np.full((8, 6), 50.0), modality="CT", patient_id="L1", slice_index=k)
        ds = pydicom.dcmread(path)
        for name in (
            "FrameOfReferenceUID",
            "ImageOrientationPatient",
            "ImagePositionPatient",
            "PatientName",
        ):
            delattr(ds, name)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.4"
        ds.save_as(path, enforce_file_format=True)
    before = {p: p.read_bytes() for p in folder.iterdir()}
    slices = read_slices(folder)
    empty = [np.zeros((8, 6), np.uint8) for _ in slices]
    one = [m.copy() for m in empty]
    one[1][2:5, 1:4] = 1
    seg = hd.seg.segread(write_seg(tmp_path / "a.dcm", slices, one, model_id="m"))
    assert seg.NumberOfFrames == 1 and seg.FrameOfReferenceUID
    uids = [str(s.meta["header"].SOPInstanceUID) for s in slices]
    got = seg.get_pixels_by_source_instance(uids, assert_missing_frames_are_empty=True)[..., 0]
    np.testing.assert_array_equal(got, np.stack(one))
    # a series without any tumour keeps every (empty) frame
    seg = hd.seg.segread(write_seg(tmp_path / "b.dcm", slices, empty, model_id="m"))
    assert seg.NumberOfFrames == 3 and not seg.pixel_array.any()
    assert {str(u[2]) for u in seg.get_source_image_uids()} == set(uids)
    assert {p: p.read_bytes() for p in folder.iterdir()} == before
    with pytest.raises(Exception, match="differs from its source"):
        write_seg(tmp_path / "c.dcm", slices, [np.zeros((4, 4), np.uint8)] * 3, model_id="m")


def test_write_seg_multiframe_source(tmp_path: Path) -> None:
    """An enhanced multi-frame source gets one SEG whose frames reference its frame numbers."""
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    singles = []
    for k in range(3):
        path = write_dicom(
            tmp_path / "s" / f"s{k}.dcm",
            np.full((8, 6), 50.0 + k),
            modality="MR",
            patient_id="MF^1",
            slice_index=k,
            series_uid=series,
            study_uid=study,
            derived=False,
        )
        ds = pydicom.dcmread(path)
        for name in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID"):
            setattr(ds, name, "")
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20240101", "120000", ""
        ds.Manufacturer, ds.ScanningSequence, ds.SequenceVariant = "x", "SE", "NONE"
        ds.ScanOptions, ds.MRAcquisitionType = "", "2D"
        singles.append(ds)
    multi = hd.legacy.LegacyConvertedEnhancedMRImage(
        singles,
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=5,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    multi.save_as(tmp_path / "mf.dcm")
    slices = read_slices(tmp_path / "mf.dcm")
    assert len(slices) == 3 and slices[0].meta["frames"] == 3
    masks = [np.zeros((8, 6), np.uint8) for _ in slices]
    masks[2][1:3, 1:4] = 1
    seg = hd.seg.segread(write_seg(tmp_path / "seg.dcm", slices, masks, model_id="m"))
    assert [str(u[2]) for u in seg.get_source_image_uids()] == [str(multi.SOPInstanceUID)]
    pixels = seg.get_pixels_by_source_frame(
        str(multi.SOPInstanceUID), [1, 2, 3], assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(pixels[..., 0], np.stack(masks))
