"""Builders of valid seed files and hostile variants of them (DICOM, NIfTI, PNG).

Used by the property-based tests: every variant fed to ``read_slices`` must end in a
one-line :class:`MrictError` or a correct read.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import resource
import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from mrict.data.dicom_io import write_dicom
from mrict.data.io import read_slices
from mrict.data.raster_io import write_png
from mrict.data.slice import MAX_SLICE_PIXELS
from mrict.errors import MrictError

#: seconds one read may take before the test process is stopped with a traceback
READ_TIMEOUT_S = 60
#: extra address space one read may claim beyond what the process already holds
MEMORY_HEADROOM = 3 * 2**30

#: hostile files tried and their outcomes, per format (printed at the end of the run)
TRIED: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()

TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian (retired)
    "1.2.840.10008.1.2.1.99",  # deflated
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.70",  # JPEG lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.5",  # RLE lossless
    "1.2.3.4.5.6.7.8.9",  # bogus
    "",
)


def _rng_image(seed: int, shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
    return np.random.default_rng(seed).uniform(lo, hi, shape)


def dicom_seeds(tmp: Path) -> list[bytes]:
    """Valid DICOM files: CT and MR, native and RLE-compressed."""
    out = []
    for i, (modality, lo, hi) in enumerate((("CT", -1000, 2000), ("MR", 0, 900))):
        path = tmp / f"seed{i}.dcm"
        write_dicom(path, _rng_image(i, (8, 6), lo, hi), modality=modality, patient_id=f"P{i}")
        out.append(path.read_bytes())
    ds = pydicom.dcmread(tmp / "seed0.dcm")
    ds.compress(RLELossless)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out.append(buf.getvalue())
    # 8-bit slices in compressed transfer syntaxes decoded by C libraries
    from PIL import Image

    gray = _rng_image(3, (16, 16), 0, 255).astype(np.uint8)
    for syntax, fmt, opts in (
        (JPEGBaseline8Bit, "JPEG", {"quality": 90}),
        (JPEG2000Lossless, "JPEG2000", {"no_jp2": True}),
    ):
        frame = io.BytesIO()
        try:
            Image.fromarray(gray).save(frame, format=fmt, **opts)
        except (OSError, KeyError, ValueError):
            continue  # this Pillow build cannot encode it
        ds = pydicom.dcmread(tmp / "seed1.dcm")
        ds.Rows = ds.Columns = 16
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([frame.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    ds = pydicom.dcmread(tmp / "seed1.dcm")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out.append(buf.getvalue())
    return out


def dicom_variant(
    base: bytes, fields: dict[str, object], syntax: str | None, pixels: bytes | None
) -> bytes:
    """Re-encode ``base`` (explicit VR LE) with ``fields`` set, optionally other pixel bytes,
    and a file meta header that declares ``syntax`` whatever the body encoding is."""
    ds = pydicom.dcmread(io.BytesIO(base))
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    for name, value in fields.items():
        if value is None:
            if name in ds:
                delattr(ds, name)
        elif isinstance(value, str) and name.startswith("Rescale"):
            # stored with a text VR so values a DS cannot hold ("abc", "nan") reach the reader
            tag = pydicom.datadict.tag_for_keyword(name)
            ds.add_new(tag, "LO", value)
        else:
            setattr(ds, name, value)
    if pixels is not None:
        ds.PixelData = pixels
    body = io.BytesIO()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(body, enforce_file_format=True)
    raw = body.getvalue()
    # split preamble + meta from the body and rewrite the meta with the declared syntax
    meta_len = struct.unpack("<I", raw[140:144])[0]
    dataset_bytes = raw[144 + meta_len :]
    meta = ds.file_meta
    if syntax is not None:
        meta.TransferSyntaxUID = syntax
    head = io.BytesIO()
    head.write(b"\x00" * 128 + b"DICM")
    from pydicom.filebase import DicomFileLike

    fp = DicomFileLike(head)
    fp.is_little_endian, fp.is_implicit_VR = True, False
    try:
        write_file_meta_info(fp, meta, enforce_standard=False)
    except (ValueError, TypeError):
        return raw
    return head.getvalue() + dataset_bytes


def nifti_seeds() -> list[bytes]:
    """Valid single-file NIfTI-1 volumes: 3-D int16, 3-D float32, 4-D with one volume."""
    out = []
    vols = (
        _rng_image(0, (6, 5, 3), -1000, 2000).astype(np.int16),
        _rng_image(1, (5, 4, 2), 0, 900).astype(np.float32),
        _rng_image(2, (4, 4, 2, 1), 0, 50).astype(np.uint8),
    )
    for vol in vols:
        out.append(nib.Nifti1Image(vol, np.diag([1.0, 1.2, 2.0, 1.0])).to_bytes())
    return out


def nifti_variant(base: bytes, fields: dict[str, object]) -> bytes:
    """``base`` with raw header fields overwritten (no validation), data bytes kept."""
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(base))
    raw = hdr.structarr.copy()
    for name, value in fields.items():
        if name == "dim":
            dim = np.zeros(8, np.int64)
            dim[: len(value)] = value  # type: ignore[arg-type]
            raw["dim"] = np.clip(dim, -(2**15), 2**15 - 1).astype(raw["dim"].dtype)
        else:
            raw[name] = value
    return raw.tobytes() + base[348:]


def png_seeds(tmp: Path) -> list[bytes]:
    """Valid PNGs: 8-bit gray, 16-bit gray, 8-bit RGB."""
    write_png(tmp / "a.png", _rng_image(0, (7, 5), 0, 255), 8)
    write_png(tmp / "b.png", _rng_image(1, (6, 6), 0, 65535), 16)
    from PIL import Image

    rgb = _rng_image(2, (5, 4, 3), 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp / "c.png")
    return [(tmp / n).read_bytes() for n in ("a.png", "b.png", "c.png")]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def png_with_ihdr(width: int, height: int, depth: int, color: int, data: bytes) -> bytes:
    """A PNG with the given IHDR (valid CRC) and ``data`` as the compressed IDAT payload."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def mutate(data: bytes, ops: list[tuple]) -> bytes:
    """Apply byte-level mutations: ("flip", pos, byte), ("cut", pos), ("insert", pos, bytes),
    ("delete", pos, n). Positions wrap around the current length."""
    buf = bytearray(data)
    for op in ops:
        n = max(len(buf), 1)
        kind, pos = op[0], op[1] % n
        if kind == "flip" and buf:
            buf[pos] = op[2]
        elif kind == "cut":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = op[2]
        elif kind == "delete":
            del buf[pos : pos + op[2]]
    return bytes(buf)


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """Bound one read in time (hard stop with a traceback) and address space."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as fh:
        used = int(fh.read().split()[0]) * resource.getpagesize()
    cap = used + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    faulthandler.dump_traceback_later(READ_TIMEOUT_S, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def check_read(path: Path) -> str:
    """Read ``path``; return "read" or "refused". Fail on any other outcome."""
    with guarded():
        try:
            slices = read_slices(path)
        except MrictError as exc:
            text = str(exc)
            assert "\n" not in text, text
            assert path.name in text, text
            return "refused"
    assert slices, "a successful read must return at least one slice"
    for s in slices:
        assert s.pixels.dtype == np.float32 and s.pixels.ndim == 2, s.pixels.shape
        assert 0 < s.pixels.size <= MAX_SLICE_PIXELS
        assert np.isfinite(s.pixels).all()
        assert isinstance(s.patient_id, str) and s.patient_id
    return "read"
