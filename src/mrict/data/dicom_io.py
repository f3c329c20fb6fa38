"""DICOM reading (HU, MONOCHROME1, multi-frame, compressed) and writing (derived images)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from mrict.data.patient_ids import patient_id_from_name
from mrict.data.slice import MAX_DECODED_BYTES, MAX_SLICE_PIXELS, ImageSlice
from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_path

# Tags copied from a source image into a derived one so it files next to its source: the
# patient and general-study attributes a CT/MR image must carry (type 1/2) plus the study
# description. Nothing else (no private tags, institution, operator or device data).
_PATIENT_STUDY_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)
_GEOMETRY_TAGS = (
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SliceLocation",
    "InstanceNumber",
    "PatientPosition",
)


# never turned into a user error: the user or the system asked the process to stop
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)


def _int_tag(ds: Dataset, name: str, default: int) -> int:
    try:
        value = ds.get(name, default)
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _rescale(ds: Dataset, path: Path | None = None) -> tuple[float, float]:
    """(slope, intercept) from the top level or the shared functional groups."""
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None and "SharedFunctionalGroupsSequence" in ds:
        groups = ds.SharedFunctionalGroupsSequence[0]
        if "PixelValueTransformationSequence" in groups:
            pvt = groups.PixelValueTransformationSequence[0]
            slope, intercept = pvt.get("RescaleSlope"), pvt.get("RescaleIntercept")
    try:
        return float(slope if slope not in (None, "") else 1.0), float(
            intercept if intercept not in (None, "") else 0.0
        )
    except (TypeError, ValueError) as exc:
        raise MrictError(
            f"invalid rescale slope/intercept ({str(slope)[:32]!r}, {str(intercept)[:32]!r})", path
        ) from exc


def _check_declared_size(ds: Dataset, path: Path) -> int:
    rows, cols = _int_tag(ds, "Rows", 0), _int_tag(ds, "Columns", 0)
    frames = max(1, _int_tag(ds, "NumberOfFrames", 1))
    bits = _int_tag(ds, "BitsAllocated", 16)
    samples = max(1, _int_tag(ds, "SamplesPerPixel", 1))
    if rows <= 0 or cols <= 0:
        raise MrictError(f"DICOM declares an empty image ({rows} x {cols})", path)
    if rows * cols > MAX_SLICE_PIXELS:
        raise MrictError(f"DICOM image too large ({rows} x {cols} pixels)", path)
    if rows * cols * frames * samples * max(bits, 8) // 8 > MAX_DECODED_BYTES:
        raise MrictError(f"DICOM pixel data too large ({frames} frames of {rows} x {cols})", path)
    return frames


def read_dicom(path: Path, modality: str | None = None) -> list[ImageSlice]:
    """Read one DICOM file (see :func:`_read_dicom`); any failure is a one-line MrictError.

    pydicom converts header elements lazily, so a corrupt element can raise almost any
    exception type at first access; those become "corrupt DICOM" errors naming the file.
    """
    try:
        return _read_dicom(path, modality)
    except (MrictError, *_PASS_THROUGH):
        raise
    except BaseException as exc:
        detail = (str(exc).strip().splitlines() or [""])[0][:120]
        raise MrictError(f"corrupt DICOM ({type(exc).__name__}: {detail})", path) from exc


def _read_dicom(path: Path, modality: str | None = None) -> list[ImageSlice]:
    """Read one DICOM file (single or multi-frame) into slices in native units.

    The rescale slope/intercept is applied, so CT comes out in HU. MONOCHROME1 images that
    carry no rescale to physical units (e.g. MR) are inverted to MONOCHROME2; CT values are
    physical HU whatever the photometric interpretation, so they are left as they are.
    RGB images are converted to luminance. Raises :class:`MrictError` on any problem.
    """
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise MrictError("not a DICOM file (no DICM preamble)", path) from exc
    except _PASS_THROUGH:
        raise
    except BaseException as exc:  # corrupt headers raise many types (decoders written in
        # Rust raise PanicException, a BaseException)
        raise MrictError(f"corrupt or truncated DICOM ({type(exc).__name__})", path) from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise MrictError("DICOM file holds no pixel data", path)
    frames = _check_declared_size(ds, path)
    try:
        arr = ds.pixel_array
    except _PASS_THROUGH:
        raise
    except BaseException as exc:
        raise MrictError(
            f"cannot decode DICOM pixel data ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})",
            path,
        ) from exc
    arr = np.asarray(arr)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = _int_tag(ds, "SamplesPerPixel", 1)
    if samples == 3 or arr.ndim == 4 or (arr.ndim == 3 and frames == 1 and arr.shape[-1] == 3):
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != frames:
        raise MrictError(f"unexpected DICOM pixel array shape {arr.shape}", path)
    slope, intercept = _rescale(ds, path)
    dicom_modality = str(ds.get("Modality", modality or "")).upper()
    is_ct = (modality or dicom_modality) == "CT"
    data = arr.astype(np.float32)
    if photometric == "MONOCHROME1" and not is_ct:
        bits = _int_tag(ds, "BitsStored", 16)
        data = float(2**bits - 1) - data if data.min() >= 0 else data.max() + data.min() - data
    data = data * np.float32(slope) + np.float32(intercept)
    if not np.isfinite(data).all():
        raise MrictError("DICOM pixels contain NaN or Inf", path)
    patient = str(ds.get("PatientID", "") or "").strip() or patient_id_from_name(path)
    del ds.PixelData
    header = ds
    return [
        ImageSlice(
            pixels=np.ascontiguousarray(data[i]),
            patient_id=patient,
            source=path,
            index=i,
            fmt="dicom",
            meta={"header": header, "frames": frames, "position": _position(ds, i)},
        )
        for i in range(frames)
    ]


def _position(ds: Dataset, frame: int) -> float:
    """Sort key of a slice along the slice normal (falls back to the instance number)."""
    try:
        pos = np.array([float(v) for v in ds.ImagePositionPatient])
        ori = np.array([float(v) for v in ds.ImageOrientationPatient])
        normal = np.cross(ori[:3], ori[3:])
        return float(pos @ normal) + frame
    except (AttributeError, TypeError, ValueError):
        return float(_int_tag(ds, "InstanceNumber", 0)) + frame * 1e-3


def sort_series(slices: Sequence[ImageSlice]) -> list[ImageSlice]:
    """Order slices of one series by position along the normal, then instance number."""
    return sorted(slices, key=lambda s: (s.meta.get("position", 0.0), str(s.source), s.index))


def uid(entropy: Sequence[str] | None) -> str:
    """A new DICOM UID; deterministic when ``entropy`` is given."""
    return generate_uid(entropy_srcs=list(entropy)) if entropy else generate_uid()


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    modality: str,
    patient_id: str,
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    slice_index: int = 0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    description: str = "",
    reference: Dataset | None = None,
    slice_thickness: float = 1.0,
    uid_entropy: Sequence[str] | None = None,
    derived: bool = True,
    anonymize: bool = False,
    anonymize_salt: str | None = None,
    pseudonyms: Mapping[str, str] | None = None,
) -> Path:
    """Write one single-frame DICOM slice atomically; return its path.

    ``pixels`` (H, W) in native units: HU for CT (stored uint16 with RescaleIntercept -1024,
    slope 1, values clipped to [-1024, 64511] HU), arbitrary non-negative units for MR (stored
    uint16, rounded and clipped to [0, 65535]). With ``reference`` (a source header) patient,
    study and geometry tags are copied so the result files next to its source; the SOP and
    Series UIDs are always new (deterministic when ``uid_entropy`` is given). ``derived``
    sets ImageType DERIVED\\SECONDARY (ORIGINAL\\PRIMARY otherwise, e.g. simulated data)
    and references the source instance (SourceImageSequence). ``anonymize`` de-identifies the
    result with :func:`mrict.data.anonymize.anonymize_dataset` (``anonymize_salt`` and
    ``pseudonyms``, a patient-id -> pseudonym mapping, are passed on).
    """
    path = Path(path)
    modality = modality.upper()
    if modality not in ("CT", "MR"):
        raise MrictError(f"cannot write DICOM for modality {modality!r}", path)
    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.ndim != 2:
        raise MrictError(f"expected a 2-D slice, got shape {pixels.shape}", path)
    if not np.isfinite(pixels).all():
        raise MrictError("refusing to write NaN/Inf pixels", path)
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    entropy = list(uid_entropy) if uid_entropy else None
    sop_uid = uid(None if entropy is None else [*entropy, "sop", str(slice_index)])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    if reference is not None:
        for name in (*_PATIENT_STUDY_TAGS, *_GEOMETRY_TAGS):
            if name in reference:
                setattr(ds, name, reference.data_element(name).value)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.PatientID = str(patient_id) if reference is None else ds.get("PatientID", patient_id)
    if "PatientName" not in ds:
        ds.PatientName = str(patient_id)
    ds.StudyInstanceUID = (
        study_uid
        or ds.get("StudyInstanceUID")
        or uid(None if entropy is None else [*entropy, "study"])
    )
    ds.SeriesInstanceUID = series_uid or uid(None if entropy is None else [*entropy, "series"])
    if not ds.get("FrameOfReferenceUID"):
        # mandatory in CT/MR images (and needed by SEGs); derived from the series, so every
        # slice of one series shares it
        ds.FrameOfReferenceUID = uid([str(ds.SeriesInstanceUID), "frame-of-reference"])
        ds.PositionReferenceIndicator = ""
    ds.SeriesNumber = 1000 if derived else 1
    ds.ImageType = ["DERIVED", "SECONDARY"] if derived else ["ORIGINAL", "PRIMARY", "AXIAL"]
    if description:
        ds.SeriesDescription = description[:64]
    if derived and reference is not None and "SOPInstanceUID" in reference:
        source = Dataset()
        source.ReferencedSOPClassUID = reference.get("SOPClassUID", sop_class)
        source.ReferencedSOPInstanceUID = reference.SOPInstanceUID
        ds.SourceImageSequence = [source]
    if "InstanceNumber" not in ds:
        ds.InstanceNumber = slice_index + 1
    if "PixelSpacing" not in ds:
        ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
    if "SliceThickness" not in ds:
        ds.SliceThickness = float(slice_thickness)
    if "ImagePositionPatient" not in ds:
        ds.ImagePositionPatient = [0.0, 0.0, float(slice_index) * float(slice_thickness)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if modality == "CT":
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        stored = np.clip(np.rint(pixels) + 1024, 0, 65535).astype(np.uint16)
    else:
        stored = np.clip(np.rint(pixels), 0, 65535).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    if derived:
        ds.DerivationDescription = (description or "derived by mrict")[:1024]
    if anonymize:  # last, so that it sees every attribute written
        from mrict.data.anonymize import anonymize_dataset

        anonymize_dataset(ds, salt=anonymize_salt, mapping=pseudonyms)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path
