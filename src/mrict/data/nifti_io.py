"""NIfTI volumes: reoriented to RAS, cut into axial slices, and written back with the
original affine and orientation."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from mrict.data.patient_ids import patient_id_from_name
from mrict.data.slice import MAX_DECODED_BYTES, MAX_SLICE_PIXELS, ImageSlice
from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_path

_RAS = axcodes2ornt(("R", "A", "S"))


def _axial_to_image(axial: np.ndarray) -> np.ndarray:
    """RAS axial plane (x, y) -> image (rows = anterior at top, cols = x)."""
    return np.ascontiguousarray(axial.T[::-1])


def _image_to_axial(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[::-1].T)


def _orientation(affine: np.ndarray, path: Path) -> np.ndarray:
    """Axis orientation of ``affine``; MrictError when it is not finite or degenerate."""
    if not np.isfinite(affine).all() or np.linalg.matrix_rank(affine[:3, :3]) < 3:
        raise MrictError("NIfTI header has an invalid (non-finite or degenerate) affine", path)
    try:
        ornt = io_orientation(affine)
        ornt_transform(ornt, _RAS)
    except (ValueError, np.linalg.LinAlgError) as exc:
        raise MrictError(f"NIfTI header has an unusable affine ({exc})", path) from exc
    return ornt


def read_nifti(path: Path, modality: str | None = None) -> list[ImageSlice]:
    """Read a 2-D/3-D NIfTI volume as axial slices in RAS orientation, native units.

    Each slice is (H, W) = (anterior->posterior, right-left axis as stored in RAS). The
    patient id is the file name without ``.nii(.gz)``. 4-D data with more than one volume
    is refused.
    """
    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise MrictError(f"not a readable NIfTI file ({type(exc).__name__})", path) from exc
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise MrictError(f"NIfTI volume has shape {tuple(img.shape)}; expected 2-D or 3-D", path)
    if min(shape) <= 0:
        raise MrictError(f"NIfTI volume is empty (shape {shape})", path)
    if shape[0] * shape[1] > MAX_SLICE_PIXELS or int(np.prod(shape)) * 4 > MAX_DECODED_BYTES:
        raise MrictError(f"NIfTI volume too large (shape {shape})", path)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as exc:
        raise MrictError(f"corrupt or truncated NIfTI data ({type(exc).__name__})", path) from exc
    if not np.isfinite(data).all():
        raise MrictError("NIfTI voxels contain NaN or Inf", path)
    affine = np.asarray(img.affine, dtype=np.float64)
    ornt = _orientation(affine, path)
    data = apply_orientation(data, ornt_transform(ornt, _RAS))
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    meta: dict[str, Any] = {
        "affine": affine,
        "shape": shape,
        "ornt": ornt,
        "n_slices": int(data.shape[2]),
        "dtype": str(img.get_data_dtype()),
        "zooms": zooms,
    }
    patient = patient_id_from_name(path)
    return [
        ImageSlice(_axial_to_image(data[:, :, k]), patient, path, k, "nifti", meta)
        for k in range(data.shape[2])
    ]


def write_nifti(
    path: str | Path,
    volume: np.ndarray,
    affine: np.ndarray | None = None,
    *,
    ornt: np.ndarray | None = None,
    dtype: str = "float32",
) -> Path:
    """Write ``volume`` (S, H, W) of axial image slices (as produced by :func:`read_nifti`).

    The slices are put back into RAS, then into the orientation ``ornt`` of the original
    file (default RAS), and saved with ``affine`` (default: 1 mm isotropic RAS) atomically.
    """
    path = Path(path)
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise MrictError(f"expected a (S, H, W) volume, got shape {volume.shape}", path)
    ras = np.stack([_image_to_axial(s) for s in volume], axis=2)
    if ornt is not None:
        ras = apply_orientation(ras, ornt_transform(_RAS, ornt))
    if affine is None:
        affine = np.eye(4)
    np_dtype = np.dtype(dtype)
    if np.issubdtype(np_dtype, np.integer):
        info = np.iinfo(np_dtype)
        ras = np.clip(np.rint(ras), info.min, info.max)
    image = nib.Nifti1Image(ras.astype(np_dtype), np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:  # streamed into the temp file itself: no second name
        if path.name.endswith(".gz"):
            with gzip.GzipFile(tmp, "wb", compresslevel=1, mtime=0) as fh:
                image.to_stream(fh)
        else:
            with tmp.open("wb") as fh:
                image.to_stream(fh)
    return path
