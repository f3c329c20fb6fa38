"""Read any supported image file into :class:`ImageSlice` objects and write results back in
the format of their source (DICOM, NIfTI, PNG/TIFF/JPEG)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mrict.data.dicom_io import read_dicom, sort_series, uid, write_dicom
from mrict.data.nifti_io import read_nifti, write_nifti
from mrict.data.patient_ids import strip_suffix
from mrict.data.raster_io import native_to_stored, read_raster, write_png, write_tiff
from mrict.data.slice import ImageSlice
from mrict.errors import MrictError

__all__ = [
    "ImageSlice",
    "image_format",
    "is_image_file",
    "read_slices",
    "write_dicom",
    "write_like",
    "write_nifti",
    "write_png",
    "write_tiff",
]

_RASTER = {".png": "png", ".tif": "tiff", ".tiff": "tiff", ".jpg": "jpeg", ".jpeg": "jpeg"}
_SKIP_SUFFIXES = {".json", ".txt", ".csv", ".md", ".yaml", ".yml", ".xml", ".html", ".partial"}


def _looks_like_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def image_format(path: Path) -> str | None:
    """ "dicom" | "nifti" | "png" | "tiff" | "jpeg" for an image file, else None.

    DICOM is recognised by the ``.dcm`` suffix or, for files without a suffix, by the DICM
    preamble.
    """
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    suffix = path.suffix.lower()
    if suffix == ".dcm":
        return "dicom"
    if suffix in _RASTER:
        return _RASTER[suffix]
    if suffix == "" or suffix.lstrip(".").isdigit():
        return "dicom" if _looks_like_dicom(path) else None
    return None


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a (non-hidden) file mrict should treat as an image."""
    if path.name.startswith(".") or not path.is_file():
        return False
    if path.suffix.lower() in _SKIP_SUFFIXES:
        return False
    return image_format(path) is not None or path.suffix == ""


def read_slices(path: str | Path, modality: str | None = None) -> list[ImageSlice]:
    """Read one image file, or a folder holding one DICOM series, into slices.

    Pixels are (H, W) float32 in native units (HU for CT). A folder is read as a DICOM
    series sorted by ImagePositionPatient / InstanceNumber. Raises :class:`MrictError`
    naming the file on any problem.
    """
    path = Path(path)
    modality = modality.upper() if modality else None
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if is_image_file(p))
        if not files:
            raise MrictError("folder holds no image files", path)
        slices = [s for f in files for s in read_slices(f, modality)]
        return sort_series(slices) if all(s.fmt == "dicom" for s in slices) else slices
    if not path.exists():
        raise MrictError("file not found", path)
    if not path.is_file():
        raise MrictError("not a regular file", path)
    fmt = image_format(path)
    if fmt == "dicom":
        return read_dicom(path, modality)
    if fmt == "nifti":
        return read_nifti(path, modality)
    if fmt in ("png", "tiff", "jpeg"):
        return read_raster(path, modality)
    raise MrictError("not an image file mrict can read (DICOM, NIfTI, PNG, TIFF, JPEG)", path)


def output_name(source: Path, index: int, pages: int) -> str:
    """File name for slice ``index`` of ``source`` when written one slice per file."""
    if pages <= 1:
        return source.name
    suffix = ".dcm" if source.suffix.lower() == ".dcm" or source.suffix == "" else source.suffix
    return f"{strip_suffix(source.name)}_{index:03d}{suffix}"


def write_like(
    slices: Sequence[ImageSlice],
    arrays: Sequence[np.ndarray],
    out_dir: str | Path,
    *,
    modality: str,
    description: str,
    uid_entropy: Sequence[str] | None = None,
    anonymize: bool = False,
    anonymize_salt: str | None = None,
    pseudonyms: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write ``arrays`` (each (H, W), native units of ``modality``: HU for CT) in the format
    of the ``slices`` they were computed from, into ``out_dir`` under the source file names.

    DICOM: one derived file per slice (new SOP/Series UIDs, ImageType DERIVED, the
    description as SeriesDescription, patient/study tags from the source). NIfTI: one volume
    per source volume with the source affine and orientation (every slice of that volume
    must be given). PNG/TIFF/JPEG: the source bit depth. Arrays must have the source slice
    size (resize back before calling). ``anonymize`` (DICOM only) de-identifies every written
    file (see :func:`mrict.data.anonymize.anonymize_dataset`); NIfTI and raster outputs
    carry no patient tags, but keep the source file names. Returns the written paths.
    """
    if len(slices) != len(arrays):
        raise ValueError("slices and arrays differ in length")
    out_dir = Path(out_dir)
    modality = modality.upper()
    written: list[Path] = []
    groups: dict[Path, list[int]] = defaultdict(list)
    for i, s in enumerate(slices):
        groups[s.source].append(i)
    series_uid = uid(None if uid_entropy is None else [*uid_entropy, "series"])
    for source, idx in groups.items():
        first = slices[idx[0]]
        for i in idx:
            if arrays[i].shape != slices[i].shape:
                raise MrictError(
                    f"output slice {arrays[i].shape} differs from its source {slices[i].shape}",
                    source,
                )
        if first.fmt == "dicom":
            for i in idx:
                s = slices[i]
                name = output_name(source, s.index, int(s.meta.get("frames", 1)))
                written.append(
                    write_dicom(
                        out_dir / name,
                        arrays[i],
                        modality=modality,
                        patient_id=s.patient_id,
                        slice_index=s.index,
                        series_uid=series_uid,
                        description=description,
                        reference=s.meta.get("header"),
                        uid_entropy=None
                        if uid_entropy is None
                        else [*uid_entropy, str(source.name), str(s.index)],
                        anonymize=anonymize,
                        anonymize_salt=anonymize_salt,
                        pseudonyms=pseudonyms,
                    )
                )
        elif first.fmt == "nifti":
            n = int(first.meta["n_slices"])
            by_index = {slices[i].index: arrays[i] for i in idx}
            if sorted(by_index) != list(range(n)):
                raise MrictError(f"need all {n} slices of the volume to write it back", source)
            volume = np.stack([by_index[k] for k in range(n)])
            dtype = "int16" if modality == "CT" else "float32"
            written.append(
                write_nifti(
                    out_dir / source.name,
                    volume,
                    first.meta["affine"],
                    ornt=first.meta["ornt"],
                    dtype=dtype,
                )
            )
        else:
            bits = int(first.meta.get("bits", 8))
            bits = 16 if bits > 16 else bits
            if first.fmt == "tiff" and int(first.meta.get("pages", 1)) > 1:
                pages = np.stack([native_to_stored(arrays[i], bits, modality) for i in idx])
                written.append(write_tiff(out_dir / source.name, pages, bits))
                continue
            for i in idx:
                stored = native_to_stored(arrays[i], bits, modality)
                target = out_dir / source.name
                if first.fmt == "tiff":
                    written.append(write_tiff(target, stored, bits))
                else:
                    written.append(
                        write_png(
                            target, stored, bits, fmt="JPEG" if first.fmt == "jpeg" else "PNG"
                        )
                    )
    return written
