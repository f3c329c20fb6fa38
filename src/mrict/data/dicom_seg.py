"""DICOM Segmentation (SEG) objects for predicted tumour masks, written with highdicom.

One SEG per source series: a BINARY segmentation with one segment, "tumour" (SCT
49755003 "Morphologically Abnormal Structure" / SCT 108369006 "Neoplasm", algorithm type
AUTOMATIC, algorithm mrict <version>). It files next to its source (patient and study tags
copied), takes its geometry (pixel spacing, orientation, positions, frame of reference) from
the source headers and references every source SOP instance. Empty frames are omitted
unless asked otherwise; a series without any tumour pixel keeps all its (empty) frames, so
the SEG still records that the series was segmented. UIDs are derived from the source
instances, the model and the masks, so the same input and model give the same UIDs; with
``SOURCE_DATE_EPOCH`` set the creation date and time come from it and the file is
byte-for-byte reproducible.

Source headers that lack attributes the SEG needs are completed in a copy (the source files
are never touched): empty type 2 patient/study attributes, and, for files written without
a frame of reference, a frame of reference UID derived from the series UID (so every SEG of
that series agrees); missing pixel spacing / orientation / position get the defaults
mrict's own DICOM writer uses (1 mm, axial, instance k + 1 at z = k * thickness).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from mrict.data.dicom_io import uid
from mrict.data.patient_ids import strip_suffix
from mrict.data.slice import ImageSlice
from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_path

SEGMENT_LABEL = "tumour"
#: SegmentedPropertyCategoryCodeSequence of the tumour segment
CATEGORY = Code("49755003", "SCT", "Morphologically Abnormal Structure")
#: SegmentedPropertyTypeCodeSequence of the tumour segment
PROPERTY = Code("108369006", "SCT", "Neoplasm")
#: algorithm family (CID 7162)
FAMILY = Code("123110", "DCM", "Artificial Intelligence")
SERIES_DESCRIPTION = "mrict tumour segmentation"
#: series number of every SEG (the derived images mrict writes use the same)
SERIES_NUMBER = 1000

# type 2 attributes highdicom copies from the first source image
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def series_key(s: ImageSlice) -> tuple[str, ...]:
    """Slices with the same key go into one SEG: one per single-frame series (same study,
    series, frame of reference and size), one per multi-frame file."""
    h: Dataset = s.meta["header"]
    series = str(h.get("SeriesInstanceUID", "") or "")
    if int(s.meta.get("frames", 1)) > 1 or not series:
        return ("file", str(s.source))
    return (
        "series",
        str(h.get("StudyInstanceUID", "")),
        series,
        str(h.get("FrameOfReferenceUID", "")),
        str(s.shape),
    )


def seg_file_name(slices: Sequence[ImageSlice]) -> str:
    """``<stem of the series' first file by name>_seg.dcm``: unique per output folder."""
    first = min((s.source for s in slices), key=lambda p: p.name)
    return f"{strip_suffix(first.name)}_seg.dcm"


def creation_time() -> dt.datetime:
    """Now, or ``SOURCE_DATE_EPOCH`` (seconds, UTC) when set, for reproducible files."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not epoch:
        return dt.datetime.now().replace(microsecond=0)
    try:
        return dt.datetime.fromtimestamp(int(epoch), tz=dt.UTC).replace(tzinfo=None)
    except (ValueError, OverflowError, OSError) as exc:
        raise MrictError(f"SOURCE_DATE_EPOCH must be seconds since 1970, got {epoch!r}") from exc


def _complete(s: ImageSlice, position: int) -> Dataset:
    """A copy of ``s``'s header with what a SEG needs from its source filled in
    (``position``: the slice's place in its series, used when it has no position)."""
    ds: Dataset = copy.deepcopy(s.meta["header"])
    if not str(ds.get("SOPInstanceUID", "") or ""):
        raise MrictError("DICOM source has no SOPInstanceUID; a SEG cannot reference it", s.source)
    if "SOPClassUID" not in ds:
        modality = str(ds.get("Modality", "")).upper()
        if modality not in ("CT", "MR"):
            raise MrictError("DICOM source has no SOPClassUID", s.source)
        ds.SOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
    for name in _TYPE2:
        if name not in ds:
            setattr(ds, name, "")
    if not str(ds.get("StudyInstanceUID", "") or ""):
        ds.StudyInstanceUID = uid([str(ds.SOPInstanceUID), "study"])
    if not str(ds.get("SeriesInstanceUID", "") or ""):
        ds.SeriesInstanceUID = uid([str(ds.SOPInstanceUID), "series"])
    if int(s.meta.get("frames", 1)) > 1:
        return ds  # enhanced multi-frame geometry lives in the functional groups
    if not str(ds.get("FrameOfReferenceUID", "") or ""):
        ds.FrameOfReferenceUID = uid([str(ds.SeriesInstanceUID), "frame-of-reference"])
    if "PixelSpacing" not in ds:
        ds.PixelSpacing = [1.0, 1.0]
    if "ImageOrientationPatient" not in ds:
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    if "ImagePositionPatient" not in ds:
        try:
            thickness = float(ds.get("SliceThickness", 1.0) or 1.0)
            position = int(ds.get("InstanceNumber", position + 1)) - 1
        except (TypeError, ValueError):
            thickness = 1.0
        ds.ImagePositionPatient = [0.0, 0.0, position * thickness]
    return ds


def write_seg(
    path: str | Path,
    slices: Sequence[ImageSlice],
    masks: Sequence[np.ndarray],
    *,
    model_id: str,
    parameters: dict[str, str] | None = None,
    omit_empty_frames: bool = True,
) -> Path:
    """Write one DICOM SEG for the DICOM ``slices`` of one series and their ``masks``.

    ``masks``: (H, W) arrays in {0, 1} at the source size (Rows x Columns), one per slice.
    Slices of a multi-frame file must be all its frames in frame order; single-frame files
    give one slice each. ``model_id`` (e.g. a digest of the weights) names the model in the
    algorithm identification and the device serial number and enters the UIDs;
    ``parameters`` are recorded as algorithm parameters. Returns ``path``.
    """
    import highdicom as hd

    from mrict import __version__

    path = Path(path)
    if not slices or len(slices) != len(masks):
        raise ValueError("need one mask per slice, and at least one slice")
    for s, m in zip(slices, masks, strict=True):
        if m.shape != s.shape:
            raise MrictError(f"mask {m.shape} differs from its source slice {s.shape}", s.source)
    multi = int(slices[0].meta.get("frames", 1)) > 1
    if multi:
        if len({s.source for s in slices}) != 1 or [s.index for s in slices] != list(
            range(int(slices[0].meta["frames"]))
        ):
            raise ValueError("a multi-frame SEG needs every frame of one file, in order")
        sources = [_complete(slices[0], 0)]
    else:
        if len({s.source for s in slices}) != len(slices):
            raise ValueError("single-frame sources must give one slice per file")
        sources = [_complete(s, k) for k, s in enumerate(slices)]
    pixels = np.stack([(np.asarray(m) > 0) for m in masks]).astype(np.uint8)
    # an all-empty series keeps its frames (nothing found is a result too)
    omit = bool(omit_empty_frames) and bool(pixels.any())
    entropy = [
        "mrict-seg",
        model_id,
        *(str(d.SOPInstanceUID) for d in sources),
        hashlib.sha256(np.packbits(pixels).tobytes()).hexdigest(),
        f"omit={omit}",
    ]
    stamp = creation_time()
    algorithm = hd.AlgorithmIdentificationSequence(
        name="mrict",
        family=FAMILY,
        version=__version__,
        source="mrict U-Net tumour segmenter",
        parameters={"model": model_id, **(parameters or {})},
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=CATEGORY,
        segmented_property_type=PROPERTY,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    options: dict[str, Any] = {
        "source_images": sources,
        "pixel_array": pixels,
        "segmentation_type": hd.seg.SegmentationTypeValues.BINARY,
        "segment_descriptions": [segment],
        "series_instance_uid": uid([*entropy, "series"]),
        "series_number": SERIES_NUMBER,
        "sop_instance_uid": uid([*entropy, "sop"]),
        "instance_number": 1,
        "manufacturer": "mrict",
        "manufacturer_model_name": "mrict U-Net tumour segmenter",
        "software_versions": __version__,
        "device_serial_number": model_id[:64],
        "content_description": "tumour mask predicted by mrict",
        "content_label": "MRICT_TUMOUR",
        "transfer_syntax_uid": ExplicitVRLittleEndian,
        "omit_empty_frames": omit,
        "series_description": SERIES_DESCRIPTION,
    }
    try:
        with warnings.catch_warnings():
            # names are copied from the source as they are (e.g. pseudonyms without a "^")
            warnings.filterwarnings("ignore", message=".*intended person name.*")
            seg = hd.seg.Segmentation(**options)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise MrictError(
            f"cannot write a DICOM SEG for this series ({detail})", slices[0].source
        ) from exc
    _fix_volatile(seg, entropy, stamp)
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return path


def _fix_volatile(seg: Any, entropy: list[str], stamp: dt.datetime) -> None:
    """Replace what highdicom makes up at run time (creation and contribution times,
    dimension organisation UID) by the creation time and values derived from the content,
    so equal inputs give equal files."""
    seg.InstanceCreationDate = seg.ContentDate = stamp.strftime("%Y%m%d")
    seg.InstanceCreationTime = seg.ContentTime = stamp.strftime("%H%M%S")
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = stamp.strftime("%Y%m%d%H%M%S")
    dim_uid = uid([*entropy, "dimension-organization"])
    for item in seg.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = dim_uid
    for item in seg.get("DimensionIndexSequence", []):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = dim_uid
