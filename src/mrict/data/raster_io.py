"""PNG / TIFF / JPEG slices, 8 or 16 bit, RGB converted to grayscale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from mrict.data.intensity import HU_MAX, HU_MIN, PNG16_HU_OFFSET
from mrict.data.patient_ids import patient_id_from_name
from mrict.data.slice import MAX_DECODED_BYTES, MAX_SLICE_PIXELS, ImageSlice
from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_path

Image.MAX_IMAGE_PIXELS = MAX_SLICE_PIXELS
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _to_gray(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return arr[..., :3].astype(np.float32) @ _LUMA
    if arr.ndim == 3 and arr.shape[-1] == 2:  # gray + alpha
        return arr[..., 0].astype(np.float32)
    if arr.ndim != 2:
        raise MrictError(f"unsupported image shape {arr.shape}", path)
    return arr.astype(np.float32)


def stored_to_native(values: np.ndarray, bits: int, modality: str | None) -> np.ndarray:
    """Raster stored values -> native units (HU for CT; unchanged otherwise)."""
    if modality != "CT":
        return values
    if bits <= 8:
        return values * np.float32((HU_MAX - HU_MIN) / 255.0) + np.float32(HU_MIN)
    return values - np.float32(PNG16_HU_OFFSET)


def native_to_stored(values: np.ndarray, bits: int, modality: str | None) -> np.ndarray:
    """Native units -> raster stored integers (inverse of :func:`stored_to_native`)."""
    values = np.asarray(values, dtype=np.float64)
    if modality == "CT":
        if bits <= 8:
            values = (values - HU_MIN) * (255.0 / (HU_MAX - HU_MIN))
        else:
            values = values + PNG16_HU_OFFSET
    top = 255 if bits <= 8 else 65535
    return np.clip(np.rint(values), 0, top).astype(np.uint8 if bits <= 8 else np.uint16)


def read_raster(path: Path, modality: str | None = None) -> list[ImageSlice]:
    """Read a PNG/JPEG (one slice) or TIFF (one slice per page) in native units."""
    fmt = (
        "tiff"
        if path.suffix.lower() in (".tif", ".tiff")
        else ("jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "png")
    )
    pages: list[np.ndarray]
    try:
        if fmt == "tiff":
            with tifffile.TiffFile(path) as tif:
                total = 0
                for page in tif.pages:
                    if int(np.prod(page.shape[:2])) > MAX_SLICE_PIXELS:
                        raise MrictError(f"TIFF page too large {page.shape}", path)
                    total += int(np.prod(page.shape)) * page.dtype.itemsize
                    if total > MAX_DECODED_BYTES:
                        raise MrictError("TIFF pixel data too large", path)
                arr = tif.asarray()
            if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4)):
                pages = [arr]
            elif arr.ndim == 3:
                pages = list(arr)
            else:
                raise MrictError(f"unsupported TIFF shape {arr.shape}", path)
        else:
            with Image.open(path) as im:
                width, height = im.size
                if width * height > MAX_SLICE_PIXELS:
                    raise MrictError(f"image too large ({height} x {width} pixels)", path)
                if width <= 0 or height <= 0:
                    raise MrictError(f"image is empty ({height} x {width} pixels)", path)
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L"):
                    pages = [np.array(im, dtype=np.uint16)]
                elif im.mode in ("I", "F", "L", "RGB", "RGBA", "LA"):
                    pages = [np.array(im)]
                else:
                    pages = [np.array(im.convert("L"))]
    except MrictError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise MrictError(f"not a readable image ({type(exc).__name__})", path) from exc
    except Exception as exc:  # truncated files raise OSError, ValueError, ...
        raise MrictError(f"corrupt or truncated image ({type(exc).__name__})", path) from exc
    slices = []
    for i, page in enumerate(pages):
        bits = 8 if page.dtype == np.uint8 else 16
        if page.dtype.kind == "f":
            bits = 32
        gray = _to_gray(page, path)
        if gray.size == 0:
            raise MrictError("image is empty (zero pixels)", path)
        if not np.isfinite(gray).all():
            raise MrictError("image pixels contain NaN or Inf", path)
        native = gray if bits == 32 else stored_to_native(gray, bits, modality)
        slices.append(
            ImageSlice(
                pixels=native.astype(np.float32),
                patient_id=patient_id_from_name(path),
                source=path,
                index=i,
                fmt=fmt,
                meta={"bits": bits, "pages": len(pages)},
            )
        )
    return slices


def write_png(path: str | Path, array: np.ndarray, bits: int = 8, fmt: str = "PNG") -> Path:
    """Write stored integer values (H, W) as an 8- or 16-bit grayscale PNG atomically.

    ``fmt="JPEG"`` writes an 8-bit JPEG (quality 95) instead.
    """
    path = Path(path)
    arr = np.asarray(array)
    if fmt == "JPEG":
        bits = 8
    top = 255 if bits <= 8 else 65535
    arr = np.clip(np.rint(arr), 0, top).astype(np.uint8 if bits <= 8 else np.uint16)
    image = Image.fromarray(arr)
    with atomic_path(path) as tmp:
        # PNG: fastest zlib level (files ~7 % larger than level 6, written 4-5x faster)
        image.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {"compress_level": 1}))
    return path


def write_tiff(path: str | Path, pages: np.ndarray, bits: int = 16) -> Path:
    """Write stored integer values (H, W) or (P, H, W) as a TIFF atomically."""
    path = Path(path)
    top = 255 if bits <= 8 else 65535
    arr = np.clip(np.rint(np.asarray(pages)), 0, top).astype(np.uint8 if bits <= 8 else np.uint16)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, arr)
    return path
