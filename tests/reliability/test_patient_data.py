"""Patient data in written DICOM: only the tags needed to file a derived image next to its
source, and nothing identifying at all with anonymize."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from mrict.data.anonymize import anonymize_dataset, pseudonym
from mrict.data.io import read_slices, write_dicom, write_like

IDENTIFYING = {
    "PatientName": "Doe^Jane^Q",
    "PatientID": "HOSP-0042-7781",
    "PatientBirthDate": "19570314",
    "PatientSex": "F",
    "PatientAge": "067Y",
    "PatientAddress": "12 Elm Street Springfield",
    "OtherPatientIDs": "MRN-99881",
    "AccessionNumber": "ACC55501234",
    "ReferringPhysicianName": "House^Gregory",
    "InstitutionName": "Saint Elsewhere Hospital",
    "InstitutionAddress": "1 Hospital Road",
    "StationName": "CTSTATION07",
    "OperatorsName": "Tech^Tina",
    "PerformingPhysicianName": "Quinn^Michaela",
    "StudyDate": "20230517",
    "StudyTime": "142233",
    "SeriesDate": "20230518",
    "AcquisitionDate": "20230519",
    "ContentDate": "20230520",
    "StudyID": "STUDY9917",
    "StudyDescription": "HEAD Jane Doe follow-up",
    "DeviceSerialNumber": "SN-4455667",
}


def _source_series(tmp_path, n=2):
    """Two CT slices of one series whose headers carry identifying values and UIDs."""
    study, series, frame = (pydicom.uid.generate_uid() for _ in range(3))
    paths = []
    for k in range(n):
        path = tmp_path / "in" / f"slice{k}.dcm"
        write_dicom(
            path,
            np.full((6, 6), 40.0 + k),
            modality="CT",
            patient_id="x",
            slice_index=k,
            derived=False,
        )
        ds = pydicom.dcmread(path)
        for name, value in IDENTIFYING.items():
            setattr(ds, name, value)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.add_new(0x00091010, "LO", "PRIVATE Jane Doe note")
        ds.private_block(0x0011, "ACME", create=True).add_new(0x01, "LO", "ACME-SECRET-77")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    uids = {study, series, frame, *(str(pydicom.dcmread(p).SOPInstanceUID) for p in paths)}
    return paths, uids


def _write(tmp_path, anonymize, **kw):
    paths, uids = _source_series(tmp_path)
    slices = read_slices(tmp_path / "in")
    arrays = [s.pixels + 1.0 for s in slices]
    out = write_like(
        slices,
        arrays,
        tmp_path / "out",
        modality="CT",
        description="synthetic MR",
        anonymize=anonymize,
        **kw,
    )
    return out, uids, slices, arrays


def test_anonymized_output_keeps_no_identifying_value(tmp_path):
    out, uids, slices, arrays = _write(tmp_path, True, anonymize_salt="s3cret")
    datasets = [pydicom.dcmread(p) for p in out]
    for path in out:
        blob = path.read_bytes()
        for name, value in IDENTIFYING.items():
            for needle in {value, *value.split("^"), *value.split()}:
                if len(needle) >= 4:
                    assert needle.encode() not in blob, (name, needle, path.name)
        for uid in uids:
            assert uid.encode() not in blob, uid
        assert b"ACME" not in blob and b"PRIVATE" not in blob
    for ds, arr in zip(datasets, arrays, strict=True):
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientID == ds.PatientName == pseudonym("HOSP-0042-7781", "s3cret")
        assert ds.PatientBirthDate == "" and ds.StudyDate == "" and "PatientAge" not in ds
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        np.testing.assert_allclose(
            ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept), np.rint(arr)
        )
    # UIDs replaced consistently: one study, one series, one frame of reference, new instances
    assert len({d.StudyInstanceUID for d in datasets}) == 1
    assert len({d.SeriesInstanceUID for d in datasets}) == 1
    assert len({d.FrameOfReferenceUID for d in datasets}) == 1
    assert len({d.SOPInstanceUID for d in datasets}) == len(datasets)
    # the written files read back as a valid series
    again = read_slices(tmp_path / "out")
    assert [s.patient_id for s in again] == [datasets[0].PatientID] * len(again)


def test_pseudonyms_are_stable_per_salt_and_mapping_wins(tmp_path):
    a = pseudonym("P1", "salt")
    assert a == pseudonym("P1", "salt") and a != pseudonym("P1", "other") != pseudonym("P2", "salt")
    assert "P1" not in a
    out, *_ = _write(tmp_path, True, pseudonyms={"HOSP-0042-7781": "STUDY-SUBJ-01"})
    assert {pydicom.dcmread(p).PatientID for p in out} == {"STUDY-SUBJ-01"}


def test_anonymize_dataset_handles_sequences_and_private_tags(tmp_path):
    ds = pydicom.Dataset()
    ds.PatientID, ds.PatientName, ds.InstitutionName = "ID77", "Roe^Richard", "General"
    ref = pydicom.Dataset()
    ref.ReferencedSOPClassUID = pydicom.uid.CTImageStorage
    ref.ReferencedSOPInstanceUID = "1.2.3.4.5.6"
    ref.OperatorsName = "Op^Olga"
    # a sequence Table E.1-1 does not list is kept and de-identified item by item
    ds.ReferencedSeriesSequence = [ref]
    ds.SourceImageSequence = [pydicom.Dataset()]  # X/Z/U*, Type 3 in images: removed
    ds.add_new(0x00291010, "LO", "secret")
    anonymize_dataset(ds, salt="k")
    item = ds.ReferencedSeriesSequence[0]
    assert item.ReferencedSOPInstanceUID != "1.2.3.4.5.6" and "OperatorsName" not in item
    assert item.ReferencedSOPClassUID == pydicom.uid.CTImageStorage
    assert "SourceImageSequence" not in ds
    assert "InstitutionName" not in ds and 0x00291010 not in ds
    assert ds.PatientID == pseudonym("ID77", "k")


def test_plain_output_copies_only_filing_tags(tmp_path):
    out, uids, slices, _ = _write(tmp_path, False)
    ds = pydicom.dcmread(out[0])
    src = pydicom.dcmread(tmp_path / "in" / "slice0.dcm")
    # traceable: same patient and study, new series and instance, reference to the source
    assert ds.PatientID == "HOSP-0042-7781" and ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    blob = out[0].read_bytes()
    for name in (
        "PatientAge",
        "PatientAddress",
        "OtherPatientIDs",
        "InstitutionName",
        "StationName",
        "OperatorsName",
        "PerformingPhysicianName",
        "DeviceSerialNumber",
    ):
        assert name not in ds
        assert IDENTIFYING[name].encode() not in blob
    assert b"ACME" not in blob and not any(e.tag.is_private for e in ds)


@pytest.mark.parametrize("salt_env", [None, "envsalt"])
def test_default_salt_is_secret_unless_given(tmp_path, monkeypatch, salt_env):
    if salt_env:
        monkeypatch.setenv("MRICT_ANON_SALT", salt_env)
    else:
        monkeypatch.delenv("MRICT_ANON_SALT", raising=False)
    out, *_ = _write(tmp_path, True)
    pid = pydicom.dcmread(out[0]).PatientID
    if salt_env:
        assert pid == pseudonym("HOSP-0042-7781", "envsalt")
    else:
        assert pid not in (pseudonym("HOSP-0042-7781", ""), pseudonym("HOSP-0042-7781", "mrict"))
