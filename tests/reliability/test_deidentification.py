"""``--anonymize`` against DICOM PS3.15 Table E.1-1 (Basic Profile column), attribute by
attribute, for every attribute mrict's DICOM writer emits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from mrict.data.anonymize import pseudonym, replace_uid
from mrict.data.io import write_dicom

#: Table E.1-1 rows for the attributes the writer can emit: tag -> (name, Basic Profile action)
TABLE_E1_1 = {
    0x00100010: ("Patient's Name", "Z"),
    0x00100020: ("Patient ID", "Z"),
    0x00100030: ("Patient's Birth Date", "Z"),
    0x00100040: ("Patient's Sex", "Z"),
    0x00080020: ("Study Date", "Z"),
    0x00080030: ("Study Time", "Z"),
    0x00200010: ("Study ID", "Z"),
    0x00080050: ("Accession Number", "Z"),
    0x00080090: ("Referring Physician's Name", "Z"),
    0x00081030: ("Study Description", "X"),
    0x0008103E: ("Series Description", "X"),
    0x00082111: ("Derivation Description", "X"),
    0x00082112: ("Source Image Sequence", "X/Z/U*"),
    0x0020000D: ("Study Instance UID", "U"),
    0x0020000E: ("Series Instance UID", "U"),
    0x00080018: ("SOP Instance UID", "U"),
    0x00200052: ("Frame of Reference UID", "U"),
    0x00081155: ("Referenced SOP Instance UID", "U"),
    0x00020003: ("Media Storage SOP Instance UID", "U"),
}

#: attributes the writer emits that Table E.1-1 does not list: kept as written
NOT_LISTED = {
    "FileMetaInformationGroupLength",
    "FileMetaInformationVersion",
    "MediaStorageSOPClassUID",
    "TransferSyntaxUID",
    "ImplementationClassUID",
    "ImplementationVersionName",
    "SOPClassUID",
    "Modality",
    "ImageType",
    "SeriesNumber",
    "InstanceNumber",
    "ReferencedSOPClassUID",
    "PositionReferenceIndicator",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SliceLocation",
    "PatientPosition",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "PixelData",
}

#: added by de-identification (PS3.15 E.1.1 and E.2)
ADDED = {
    "PatientIdentityRemoved",
    "LongitudinalTemporalInformationModified",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
}

SALT = "table-e11"


def _source(tmp_path: Path, k: int, study: str, series: str, frame: str) -> Dataset:
    """A source CT header carrying every patient, study and geometry attribute the writer
    copies, with identifying values."""
    path = tmp_path / "src" / f"s{k}.dcm"
    write_dicom(path, np.zeros((4, 4)), modality="CT", patient_id="x", derived=False)
    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID = "Doe^Jane", "HOSP-0042"
    ds.PatientBirthDate, ds.PatientSex = "19570314", "F"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20230517", "142233", "STUDY9917"
    ds.AccessionNumber, ds.ReferringPhysicianName = "ACC5550", "House^Gregory"
    ds.StudyDescription = "HEAD Jane Doe follow-up"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.PositionReferenceIndicator, ds.PatientPosition = "OM", "HFS"
    ds.SliceLocation, ds.InstanceNumber = 2.5 * k, k + 1
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    return ds


def _write(tmp_path: Path, anonymize: bool) -> list[Dataset]:
    """Two derived slices of one series written from the same sources, with the same
    deterministic UIDs, so the plain and the anonymized files can be compared."""
    study, series, frame = ("1.2.826.0.1.3680043.8.498.1" + s for s in (".1", ".2", ".3"))
    out = []
    for k in range(2):
        ref = _source(tmp_path, k, study, series, frame)
        ref.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.2.{k + 1}"
        path = tmp_path / ("anon" if anonymize else "plain") / f"{k}.dcm"
        write_dicom(
            path,
            np.full((4, 4), 30.0),
            modality="CT",
            patient_id="HOSP-0042",
            slice_index=k,
            description="synthetic CT from MR",
            reference=ref,
            uid_entropy=["table-e11"],
            anonymize=anonymize,
            anonymize_salt=SALT,
        )
        out.append(pydicom.dcmread(path))
    return out


def _elements(ds: Dataset) -> Iterator[pydicom.DataElement]:
    yield from ds.file_meta
    yield from ds.iterall()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Dataset], list[Dataset]]:
    tmp = tmp_path_factory.mktemp("deid")
    return _write(tmp, anonymize=False), _write(tmp, anonymize=True)


def test_every_attribute_written_is_classified(written) -> None:
    plain, _ = written
    unknown = {
        elem.keyword or str(elem.tag)
        for ds in plain
        for elem in _elements(ds)
        if elem.tag not in TABLE_E1_1 and elem.keyword not in NOT_LISTED
    }
    assert unknown == set(), "new attributes: look up their Table E.1-1 action"
    emitted = {elem.tag for elem in _elements(plain[0])}
    assert set(TABLE_E1_1) <= emitted, "the source must exercise every listed attribute"


@pytest.mark.parametrize("tag", sorted(TABLE_E1_1), ids=lambda t: TABLE_E1_1[t][0])
def test_listed_attribute_follows_the_basic_profile(written, tag: int) -> None:
    plain, anon = written
    name, action = TABLE_E1_1[tag]
    for before, after in zip(plain, anon, strict=True):
        where_before = before.file_meta if tag >> 16 == 0x0002 else before
        where_after = after.file_meta if tag >> 16 == 0x0002 else after
        if tag == 0x00081155:  # only inside the Source Image Sequence, removed with it
            assert tag in before.SourceImageSequence[0]
            assert all(e.tag != tag for e in after.iterall()), name
        elif action in ("X", "X/Z/U*"):  # X/Z/U*: Type 3 in the CT and MR Image IODs
            assert tag in where_before and tag not in where_after, name
        elif action == "Z":
            value = where_after[tag].value
            if name in ("Patient's Name", "Patient ID"):  # dummy value: the pseudonym
                assert str(value) == pseudonym("HOSP-0042", SALT), name
            else:
                assert value in ("", None), (name, value)
            assert str(where_before[tag].value) != str(value)
        elif action == "U":
            old, new = str(where_before[tag].value), str(where_after[tag].value)
            assert new and new != old and new == replace_uid(old, SALT), name
        else:  # pragma: no cover - the table above uses only these actions
            raise AssertionError(action)


def test_uids_stay_consistent_across_the_series(written) -> None:
    _, anon = written
    for name in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({str(ds.get(name)) for ds in anon}) == 1, name
    assert len({ds.SOPInstanceUID for ds in anon}) == 2
    for ds in anon:
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_unlisted_attributes_are_kept_and_nothing_else_is_added(written) -> None:
    plain, anon = written
    for before, after in zip(plain, anon, strict=True):
        # top level only: ReferencedSOPClassUID goes with the Source Image Sequence
        for elem in [*before.file_meta, *before]:
            if elem.keyword in NOT_LISTED and elem.keyword != "FileMetaInformationGroupLength":
                where = after.file_meta if elem.tag >> 16 == 0x0002 else after
                assert where[elem.tag].value == elem.value, elem.keyword
        before_tags = {e.tag for e in _elements(before)}
        added = {e.keyword for e in after if e.tag not in before_tags}
        assert added == ADDED
        assert not any(e.tag.is_private for e in after.iterall())


def test_profile_is_recorded(written) -> None:
    _, anon = written
    for ds in anon:
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.LongitudinalTemporalInformationModified == "REMOVED"
        (code,) = ds.DeidentificationMethodCodeSequence
        assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
        assert code.CodeMeaning == "Basic Application Confidentiality Profile"
        assert "Basic Application Level Confidentiality Profile" in ds.DeidentificationMethod
