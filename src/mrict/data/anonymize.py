"""De-identification of the DICOM images mrict writes: the DICOM PS3.15 Basic Application
Level Confidentiality Profile (Table E.1-1, Basic Profile column, no options) applied to every
attribute :func:`mrict.data.dicom_io.write_dicom` can emit.

Of those attributes, the table lists: patient name, id, birth date and sex, study date and
time, study id, accession number and referring physician (Z: kept empty, except that patient
name and id get a pseudonym, a dummy value Z allows); study, series and derivation
descriptions (X: removed); the Source Image Sequence (X/Z/U*; Type 3 in the CT and MR Image
IODs, so removed); every instance UID (U: replaced by a new UID derived from the original with
a salt, so one source UID always maps to the same new UID, series, studies and frames of
reference stay consistent across files, and the original cannot be recovered without the
salt). Everything else mrict writes (geometry, pixel description, rescale, modality, SOP
class, image type, series and instance numbers) is not in the table and is kept. Private
tags are removed; Patient Identity Removed is YES, Longitudinal Temporal Information Modified
is REMOVED and the De-identification Method Code Sequence holds 113100.
tests/reliability/test_deidentification.py checks each attribute against the table.

Datasets from elsewhere additionally lose the identifying attributes source headers commonly
carry (``_REMOVE``); for such datasets this is not a complete implementation of the profile.
The profile does not cover text burned into the pixels.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

#: DICOM code of the basic application confidentiality profile
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
METHOD = "mrict: PS3.15 Basic Application Level Confidentiality Profile"

#: attributes that must stay present (type 2) but are emptied
_EMPTY = (
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
)
#: attributes removed outright
_REMOVE = (
    "SeriesDescription",
    "SourceImageSequence",
    "ReferencedImageSequence",
    "PatientAge",
    "PatientBirthTime",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientWeight",
    "PatientSize",
    "PatientComments",
    "PatientReligiousPreference",
    "MilitaryRank",
    "EthnicGroup",
    "Occupation",
    "AdditionalPatientHistory",
    "MedicalRecordLocator",
    "OtherPatientIDs",
    "OtherPatientNames",
    "OtherPatientIDsSequence",
    "InsurancePlanIdentification",
    "IssuerOfPatientID",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "InstitutionCodeSequence",
    "StationName",
    "DeviceSerialNumber",
    "OperatorsName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord",
    "RequestingPhysician",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "StudyDescription",
    "RequestedProcedureDescription",
    "PerformedProcedureStepDescription",
    "PerformedProcedureStepID",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "ScheduledProcedureStepID",
    "RequestAttributesSequence",
    "ReferencedPatientSequence",
    "ReferencedStudySequence",
    "ReferencedPerformedProcedureStepSequence",
    "ImageComments",
    "ProtocolName",
    "AdmittingDiagnosesDescription",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionDateTime",
    "ContentDate",
    "ContentTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "InstanceCreatorUID",
    "FrameComments",
    "DerivationDescription",
)

_process_salt: str | None = None


def default_salt() -> str:
    """The salt used when none is given: ``$MRICT_ANON_SALT``, else a random one per process.

    A random salt keeps pseudonyms consistent within one run but unlinkable across runs; set
    ``MRICT_ANON_SALT`` (kept secret) for pseudonyms that stay the same between runs.
    """
    global _process_salt
    env = os.environ.get("MRICT_ANON_SALT")
    if env:
        return env
    if _process_salt is None:
        _process_salt = secrets.token_hex(16)
    return _process_salt


def pseudonym(patient_id: str, salt: str, mapping: Mapping[str, str] | None = None) -> str:
    """``mapping[patient_id]`` when given, else ``ANON-`` + 12 hex digits of a salted hash."""
    if mapping is not None and patient_id in mapping:
        return str(mapping[patient_id])
    digest = hashlib.sha256(f"{salt}\x00{patient_id}".encode()).hexdigest()
    return f"ANON-{digest[:12].upper()}"


def replace_uid(uid: str, salt: str) -> str:
    """A new UID derived from ``uid`` and ``salt`` (same input -> same output)."""
    return generate_uid(entropy_srcs=["mrict-anonymize", salt, str(uid)])


def _walk(ds: Dataset, salt: str) -> None:
    for name in _EMPTY:
        if name in ds:
            ds.data_element(name).value = ""
    for name in _REMOVE:
        if name in ds:
            delattr(ds, name)
    ds.remove_private_tags()
    for elem in list(ds):
        if elem.VR == "UI" and elem.value and elem.keyword not in _KEEP_UIDS:
            if elem.VM > 1:
                elem.value = [replace_uid(str(v), salt) for v in elem.value]
            else:
                elem.value = replace_uid(str(elem.value), salt)
        elif elem.VR == "SQ" and isinstance(elem.value, Sequence):
            for item in elem.value:
                _walk(item, salt)


#: UIDs that name a standard (class, transfer syntax, coding scheme), not an instance
_KEEP_UIDS = frozenset(
    {
        "SOPClassUID",
        "ReferencedSOPClassUID",
        "MediaStorageSOPClassUID",
        "TransferSyntaxUID",
        "ImplementationClassUID",
        "ReferencedSOPClassUIDInFile",
        "ReferencedTransferSyntaxUIDInFile",
        "CodingSchemeUID",
        "ContextUID",
        "MappingResourceUID",
    }
)


def anonymize_dataset(
    ds: Dataset, *, salt: str | None = None, mapping: Mapping[str, str] | None = None
) -> Dataset:
    """De-identify ``ds`` in place (and its file meta) and return it.

    PatientID and PatientName become :func:`pseudonym` of the original PatientID (or of the
    name when there is no id); birth date, sex, study date/time, accession number, referring
    physician and study id are emptied; ages, addresses, institutions, operators,
    descriptions, source image references, other dates/times and private tags are removed;
    instance UIDs (study, series, SOP instance, frame of reference, references in sequences)
    are replaced consistently via :func:`replace_uid`. ``salt`` defaults to
    :func:`default_salt`. Apply it last: attributes added afterwards are not de-identified.
    """
    salt = default_salt() if salt is None else salt
    original = str(ds.get("PatientID", "") or "").strip() or str(ds.get("PatientName", "") or "")
    alias = pseudonym(original, salt, mapping)
    _walk(ds, salt)
    ds.PatientID = alias
    ds.PatientName = alias
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = ds.get(
            "SOPInstanceUID", replace_uid(meta.MediaStorageSOPInstanceUID, salt)
        )
    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    ds.DeidentificationMethod = METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = BASIC_PROFILE_CODE
    ds.DeidentificationMethodCodeSequence = [code]
    return ds
