"""Property-based attacks on the readers: every hostile DICOM, NIfTI or PNG file ends in a
one-line MrictError or a correct read; never another exception, a hang or a memory blow-up.

``MRICT_FUZZ_EXAMPLES=N`` runs N examples per property (default 100) and prints how many
files of each format were tried.
"""

from __future__ import annotations

import os
import tempfile
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hostile import (
    OUTCOMES,
    TRANSFER_SYNTAXES,
    TRIED,
    check_read,
    dicom_seeds,
    dicom_variant,
    mutate,
    nifti_seeds,
    nifti_variant,
    png_seeds,
    png_with_ihdr,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mrict.cli import run
from mrict.data.io import read_slices
from mrict.errors import MrictError

EXAMPLES = int(os.environ.get("MRICT_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="MRICT_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

_SEED_DIR = Path(tempfile.mkdtemp(prefix="mrict-fuzz-seeds-"))
DICOM_SEEDS = dicom_seeds(_SEED_DIR)
NIFTI_SEEDS = nifti_seeds()
PNG_SEEDS = png_seeds(_SEED_DIR)


def _try(fmt: str, data: bytes, name: str) -> str:
    work = Path(tempfile.mkdtemp(prefix="mrict-fuzz-"))
    path = work / name
    path.write_bytes(data)
    try:
        outcome = check_read(path)
    finally:
        path.unlink()
        work.rmdir()
    TRIED[fmt] += 1
    OUTCOMES[f"{fmt}:{outcome}"] += 1
    return outcome


positions = st.one_of(st.integers(0, 400), st.integers(0, 1 << 20))
byte_ops = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), positions, st.integers(0, 255)),
        st.tuples(st.just("cut"), positions),
        st.tuples(st.just("insert"), positions, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), positions, st.integers(1, 64)),
    ),
    min_size=1,
    max_size=6,
)
huge_ints = st.one_of(
    st.sampled_from([0, 1, 2, 3, 7, 8, 9, 255, 8192, 8193, 32767, 65535]),
    st.integers(0, 65535),
)


# ----------------------------------------------------------------------------- byte mutations
@FUZZ
@given(seed=st.sampled_from(range(len(DICOM_SEEDS))), ops=byte_ops)
def test_mutated_dicom_bytes(seed, ops):
    _try("dicom", mutate(DICOM_SEEDS[seed], ops), "x.dcm")


@FUZZ
@given(seed=st.sampled_from(range(len(NIFTI_SEEDS))), ops=byte_ops, gz=st.booleans())
def test_mutated_nifti_bytes(seed, ops, gz):
    data = mutate(NIFTI_SEEDS[seed], ops)
    if gz:
        import gzip

        data = gzip.compress(data, mtime=0)
    _try("nifti", data, "x.nii.gz" if gz else "x.nii")


@FUZZ
@given(seed=st.sampled_from(range(len(PNG_SEEDS))), ops=byte_ops)
def test_mutated_png_bytes(seed, ops):
    _try("png", mutate(PNG_SEEDS[seed], ops), "x.png")


# ------------------------------------------------------------------------- structured attacks
dicom_fields = st.fixed_dictionaries(
    {},
    optional={
        "Rows": huge_ints,
        "Columns": huge_ints,
        "NumberOfFrames": st.one_of(
            st.none(), st.sampled_from(["0", "1", "2", "1000", "2147483647", "-3"])
        ),
        "BitsAllocated": st.sampled_from([None, 0, 1, 7, 8, 12, 16, 32, 64]),
        "BitsStored": st.sampled_from([None, 0, 1, 8, 12, 16, 17, 32]),
        "HighBit": st.sampled_from([None, 0, 7, 15, 31]),
        "PixelRepresentation": st.sampled_from([None, 0, 1, 2]),
        "SamplesPerPixel": st.sampled_from([None, 0, 1, 3, 4]),
        "PlanarConfiguration": st.sampled_from([None, 0, 1]),
        "PhotometricInterpretation": st.sampled_from(
            [None, "MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR", "BOGUS"]
        ),
        "RescaleSlope": st.sampled_from([None, "nan", "inf", "-inf", "1e308", "0", "abc"]),
        "RescaleIntercept": st.sampled_from([None, "nan", "-1e308", "-1024"]),
        "Modality": st.sampled_from([None, "CT", "MR", "XX"]),
        "PatientID": st.sampled_from([None, "", "  ", "../../etc/passwd", "A" * 64]),
    },
)
pixel_bytes = st.one_of(
    st.none(),
    st.binary(min_size=0, max_size=64),
    st.integers(0, 400).map(lambda n: bytes(n)),
    st.sampled_from([b"\xff" * 96, b"\x00\x00\xc0\x7f" * 24, b"\x00\x00\x80\x7f" * 24]),
)


@FUZZ
@given(
    seed=st.sampled_from(range(len(DICOM_SEEDS))),
    fields=dicom_fields,
    syntax=st.one_of(st.none(), st.sampled_from(TRANSFER_SYNTAXES)),
    pixels=pixel_bytes,
)
def test_dicom_with_hostile_header_fields(seed, fields, syntax, pixels):
    _try("dicom", dicom_variant(DICOM_SEEDS[seed], fields, syntax, pixels), "x.dcm")


nifti_fields = st.fixed_dictionaries(
    {},
    optional={
        "dim": st.lists(st.integers(-5, 2**15 - 1), min_size=1, max_size=8).map(
            lambda d: [min(max(len(d) - 1 + (d[0] % 3), -1), 9), *d[1:]]
        ),
        "datatype": st.sampled_from(
            [
                0,
                1,
                2,
                4,
                8,
                16,
                32,
                64,
                128,
                256,
                512,
                768,
                1024,
                1280,
                1536,
                1792,
                2048,
                2304,
                9999,
            ]
        ),
        "bitpix": st.sampled_from([0, 1, 8, 16, 32, 64, 128, 255]),
        "vox_offset": st.sampled_from([0.0, 348.0, 352.0, 1e10, -1.0, float("nan"), 3.5]),
        "scl_slope": st.sampled_from([0.0, 1.0, float("nan"), float("inf"), 1e38, -1e38]),
        "scl_inter": st.sampled_from([0.0, float("nan"), float("-inf"), 1e38]),
        "pixdim": st.sampled_from(
            [[1.0] * 8, [0.0] * 8, [float("nan")] * 8, [-1.0, 1e30, 1, 1, 1, 1, 1, 1]]
        ),
        "qform_code": st.sampled_from([0, 1, 2, 99]),
        "sform_code": st.sampled_from([0, 1, 2, 99]),
        "srow_x": st.sampled_from([[0.0] * 4, [float("nan")] * 4, [float("inf"), 0, 0, 0]]),
        "quatern_b": st.sampled_from([0.0, 2.0, float("nan")]),
        "sizeof_hdr": st.sampled_from([348, 540, 0, 1]),
        "magic": st.sampled_from([b"n+1", b"ni1", b"n+2", b"xxx"]),
    },
)


@FUZZ
@given(
    seed=st.sampled_from(range(len(NIFTI_SEEDS))),
    fields=nifti_fields,
    cut=st.one_of(st.none(), st.integers(0, 800)),
)
def test_nifti_with_hostile_header_fields(seed, fields, cut):
    data = nifti_variant(NIFTI_SEEDS[seed], fields)
    _try("nifti", data if cut is None else data[:cut], "x.nii")


@FUZZ
@given(
    width=st.one_of(huge_ints, st.sampled_from([2**31 - 1, 2**32 - 1, 100000])),
    height=st.one_of(huge_ints, st.sampled_from([2**31 - 1, 2**32 - 1, 100000])),
    depth=st.sampled_from([1, 2, 4, 8, 16, 3, 32]),
    color=st.sampled_from([0, 2, 3, 4, 6, 1, 7]),
    payload=st.one_of(
        st.binary(max_size=64),
        st.integers(0, 5000).map(lambda n: zlib.compress(bytes(n))),
    ),
)
def test_png_with_hostile_ihdr(width, height, depth, color, payload):
    _try("png", png_with_ihdr(width, height, depth, color, payload), "x.png")


# ---------------------------------------------------------------- refusal before allocation
def _peak_bytes(path: Path) -> tuple[str, int]:
    tracemalloc.start()
    try:
        read_slices(path)
        outcome = "read"
    except MrictError as exc:
        outcome = str(exc)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return outcome, peak


def test_nifti_claiming_a_huge_shape_is_refused_before_allocation(tmp_path):
    for dim in ([3, 9000, 9000, 1], [3, 4096, 4096, 200], [4, 64, 64, 64, 5000]):
        hdr = nib.Nifti1Header()
        hdr.set_data_dtype(np.float32)
        raw = hdr.structarr.copy()
        raw["dim"] = [*dim, *([1] * (8 - len(dim)))]
        raw["vox_offset"] = 352
        path = tmp_path / "huge.nii"
        path.write_bytes(raw.tobytes() + bytes(4) + bytes(1024))
        outcome, peak = _peak_bytes(path)
        assert "huge.nii" in outcome and ("too large" in outcome or "expected 2-D" in outcome)
        assert peak < 32 * 2**20, f"{dim}: {peak} bytes allocated before refusing"


def test_png_declaring_a_huge_size_is_refused_before_allocation(tmp_path):
    path = tmp_path / "bomb.png"
    # 9000 x 9000 8-bit gray: over the 8192 x 8192 limit, under PIL's own bomb error (2x)
    row = b"\x00" + bytes(9000)
    path.write_bytes(png_with_ihdr(9000, 9000, 8, 0, zlib.compress(row * 9000, 9)))
    assert path.stat().st_size < 200_000
    outcome, peak = _peak_bytes(path)
    assert "bomb.png" in outcome and "too large" in outcome
    assert peak < 32 * 2**20


def test_dicom_with_absurd_frames_is_refused_before_allocation(tmp_path):
    data = dicom_variant(
        DICOM_SEEDS[0], {"NumberOfFrames": "2147483647", "Rows": 512, "Columns": 512}, None, None
    )
    path = tmp_path / "frames.dcm"
    path.write_bytes(data)
    outcome, peak = _peak_bytes(path)
    assert "frames.dcm" in outcome and "too large" in outcome
    assert peak < 32 * 2**20


def test_hostile_file_gives_one_line_cli_error(tmp_path, capsys):
    img = tmp_path / "MR" / "image_MR"
    img.mkdir(parents=True)
    (img / "P1.nii").write_bytes(nifti_variant(NIFTI_SEEDS[1], {"dim": [3, 9000, 9000, 9000]}))
    code = run(["inspect", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "P1.nii" in err and "Traceback" not in err


def test_rle_segment_overrun_is_a_user_error_not_a_decoder_panic(tmp_path):
    # found by the fuzzer: the RLE decoder (Rust) panicked with a BaseException
    path = tmp_path / "rle.dcm"
    # counted from the end: the RLE segments are the file's last bytes, while the header
    # before them varies in length with the generated UIDs
    seed = DICOM_SEEDS[2]
    path.write_bytes(mutate(seed, [("flip", len(seed) - 192, 0)]))
    with pytest.raises(MrictError, match="cannot decode DICOM pixel data"):
        read_slices(path)


def test_degenerate_or_nan_nifti_affine_is_a_user_error(tmp_path):
    # found by the fuzzer: nibabel raised LinAlgError / ValueError on these affines
    for row in ([float("nan")] * 4, [0.0] * 4):
        path = tmp_path / "aff.nii"
        path.write_bytes(nifti_variant(NIFTI_SEEDS[0], {"srow_x": row, "sform_code": 1}))
        with pytest.raises(MrictError, match="affine"):
            read_slices(path)


def test_non_numeric_rescale_slope_names_the_file(tmp_path):
    # found by the fuzzer: the message lacked the file name
    path = tmp_path / "slope.dcm"
    path.write_bytes(dicom_variant(DICOM_SEEDS[0], {"RescaleSlope": "abc"}, None, None))
    with pytest.raises(MrictError, match=r"slope\.dcm: invalid rescale"):
        read_slices(path)


def test_corrupt_header_element_found_lazily_is_a_user_error(tmp_path):
    # found by the fuzzer: a bad VR in BitsAllocated raised NotImplementedError on access
    data = bytearray(DICOM_SEEDS[0])
    at = data.index(b"\x28\x00\x00\x01")  # (0028,0100) BitsAllocated, explicit VR "US"
    data[at + 4 : at + 6] = b"U\x00"
    path = tmp_path / "vr.dcm"
    path.write_bytes(bytes(data))
    with pytest.raises(MrictError, match=r"vr\.dcm: corrupt DICOM"):
        read_slices(path)
