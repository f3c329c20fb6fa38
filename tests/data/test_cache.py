"""The prepared-slice cache: hits equal fresh reads, every input change is a miss, damage
and unwritable folders never break loading, and a disabled cache writes nothing."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest

from mrict.data import cache as slice_cache
from mrict.data.datasets import SliceSet, load_modality
from mrict.data.io import write_dicom, write_like
from mrict.data.slice import ImageSlice
from mrict.errors import MrictError


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "slice-cache"
    monkeypatch.setenv("MRICT_CACHE_DIR", str(folder))
    monkeypatch.delenv("MRICT_NO_CACHE", raising=False)
    return folder


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.npz")) if folder.is_dir() else []


def _load(root: Path, modality: str = "MR", **kw) -> SliceSet:
    return load_modality(root, modality, size=kw.pop("size", 32), progress=False, **kw)


def _same(a: SliceSet, b: SliceSet) -> None:
    assert np.array_equal(a.images, b.images) and a.images.dtype == b.images.dtype
    assert np.array_equal(a.masks, b.masks) and a.masks.dtype == b.masks.dtype
    assert np.array_equal(a.has_mask, b.has_mask)
    assert a.patient_ids == b.patient_ids and a.norm == b.norm
    assert [(s.source, s.index, s.fmt, s.patient_id, s.shape) for s in a.slices] == [
        (s.source, s.index, s.fmt, s.patient_id, s.shape) for s in b.slices
    ]


def _is_hit(result: SliceSet) -> bool:
    return all(isinstance(s, slice_cache.LazySlice) for s in result.slices)


@pytest.mark.parametrize("fmt", ["dicom", "nifti", "png"])
def test_hit_equals_fresh_read(make_dataset, cache_dir, fmt):
    root = make_dataset(fmt, patients=2, slices=2, size=24)
    fresh = _load(root, cache=False)
    assert not _entries(cache_dir)
    first = _load(root)
    assert len(_entries(cache_dir)) == 1 and not _is_hit(first)
    hit = _load(root)
    assert _is_hit(hit)
    _same(fresh, first)
    _same(fresh, hit)
    # the restored slices read their native pixels and meta from the source on demand
    for a, b in zip(fresh.slices, hit.slices, strict=True):
        assert np.array_equal(a.pixels, b.pixels) and a.meta.keys() == b.meta.keys()
    # and subsets keep working
    _same(fresh.select(["MR001"]).labelled(), hit.select(["MR001"]).labelled())


def test_hit_writes_back_like_a_fresh_read(make_dataset, cache_dir, tmp_path):
    import nibabel as nib

    root = make_dataset("nifti", patients=1, slices=3, size=16, modalities=("CT",))
    fresh = _load(root, "CT")
    hit = _load(root, "CT")
    assert _is_hit(hit)
    out = {}
    for name, result in (("fresh", fresh), ("hit", hit)):
        arrays = [s.pixels + 10.0 for s in result.slices]
        (path,) = write_like(result.slices, arrays, tmp_path / name, modality="CT", description="t")
        out[name] = nib.load(path)
    assert np.array_equal(out["fresh"].get_fdata(), out["hit"].get_fdata())
    assert np.array_equal(out["fresh"].affine, out["hit"].affine)


def test_different_root_spelling_hits_with_its_own_paths(make_dataset, cache_dir, monkeypatch):
    root = make_dataset("png", patients=1, slices=2, size=16)
    _load(root)
    monkeypatch.chdir(root.parent)
    hit = _load(Path(root.name))
    assert _is_hit(hit)
    assert all(s.source.parts[0] == root.name for s in hit.slices)
    assert hit.slices[0].pixels.shape == (16, 16)


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


@pytest.mark.parametrize("change", ["content", "mtime", "add", "delete", "mask"])
def test_file_changes_miss(make_dataset, cache_dir, change):
    root = make_dataset("dicom", patients=2, slices=2, size=24)
    img_dir = root / "MR" / "image_MR"
    before = _load(root)
    target = img_dir / "MR001_001.dcm"
    if change == "content":
        write_dicom(target, np.full((24, 24), 50.0), modality="MR", patient_id="MR001")
    elif change == "mtime":
        _touch_later(target)
    elif change == "add":
        write_dicom(
            img_dir / "MR002_000.dcm", np.full((24, 24), 50.0), modality="MR", patient_id="MR002"
        )
    elif change == "delete":
        target.unlink()
    else:
        _touch_later(root / "MR" / "mask_MR" / "MR001_001.png")
    after = _load(root)
    assert not _is_hit(after) and len(_entries(cache_dir)) == 2
    _same(after, _load(root, cache=False))
    if change == "add":
        assert after.patients() == ["MR000", "MR001", "MR002"]
    elif change == "delete":
        assert len(after) == len(before) - 1
    elif change == "content":
        assert not np.array_equal(after.images, before.images)


@pytest.mark.parametrize("option", [{"size": 16}, {"mask_threshold": 0.5}, {"skip_bad": True}])
def test_option_changes_miss(make_dataset, cache_dir, option):
    root = make_dataset("png", patients=1, slices=2, size=24)
    _load(root)
    changed = _load(root, **option)
    assert not _is_hit(changed) and len(_entries(cache_dir)) == 2
    assert _is_hit(_load(root, **option))


def test_skipped_warnings_repeat_on_hit(make_dataset, cache_dir):
    root = make_dataset("dicom", patients=3, slices=1, size=16)
    (root / "MR" / "image_MR" / "MR001_000.dcm").write_bytes(b"garbage")
    seen: list[list[str]] = []
    for _ in range(2):
        warnings: list[str] = []
        result = _load(root, skip_bad=True, warn=warnings.append)
        seen.append(warnings)
        assert result.patients() == ["MR000", "MR002"]
    assert _is_hit(result)
    assert seen[0] == seen[1] and len(seen[0]) == 1 and "MR001_000.dcm" in seen[0][0]


@pytest.mark.parametrize(
    "damage", ["truncate", "flip", "garbage", "empty", "wrong_key", "bad_meta", "bad_values"]
)
def test_damaged_cache_file_is_rebuilt(make_dataset, cache_dir, damage):
    root = make_dataset("png", patients=2, slices=2, size=24)
    fresh = _load(root)
    (entry,) = _entries(cache_dir)
    data = entry.read_bytes()
    if damage == "truncate":
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        pos = len(data) // 3  # inside the image array
        entry.write_bytes(data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1 :])
    elif damage == "garbage":
        entry.write_bytes(b"not a cache file")
    elif damage == "empty":
        entry.write_bytes(b"")
    elif damage in ("bad_meta", "bad_values"):  # well-formed files with the right key
        with np.load(entry) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays["meta"].tobytes())
        if damage == "bad_meta":
            meta["rows"][0][1] = "x"
        else:
            arrays["images"][0, 0, 0] = 7.0
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        with entry.open("wb") as fh:
            np.savez(fh, **arrays)
    else:  # a valid file stored under the wrong name
        other = make_dataset("png", patients=1, slices=1, size=24, seed=3, root=root.parent / "o")
        _load(other)
        (other_entry,) = [p for p in _entries(cache_dir) if p != entry]
        entry.write_bytes(other_entry.read_bytes())
    rebuilt = _load(root)
    assert not _is_hit(rebuilt)
    _same(fresh, rebuilt)
    assert _is_hit(_load(root))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions")
def test_unwritable_cache_dir_still_loads(make_dataset, cache_dir):
    root = make_dataset("png", patients=1, slices=2, size=16)
    cache_dir.mkdir()
    cache_dir.chmod(stat.S_IRUSR | stat.S_IXUSR)
    slice_cache._warned_dirs.clear()
    try:
        warnings: list[str] = []
        a = _load(root, warn=warnings.append)
        b = _load(root, warn=warnings.append)
    finally:
        cache_dir.chmod(stat.S_IRWXU)
    _same(a, b)
    assert len(warnings) == 1 and "slice cache disabled" in warnings[0]
    assert not _entries(cache_dir) and not list(cache_dir.iterdir())


def test_cache_dir_under_a_file_still_loads(make_dataset, tmp_path, monkeypatch):
    root = make_dataset("png", patients=1, slices=2, size=16)
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    monkeypatch.setenv("MRICT_CACHE_DIR", str(blocker / "sub"))
    warnings: list[str] = []
    a = _load(root, warn=warnings.append)
    b = _load(root, warn=warnings.append)
    _same(a, b)
    assert not _is_hit(b) and blocker.read_text() == "x"
    assert len(warnings) == 1 and "slice cache disabled" in warnings[0]


@pytest.mark.parametrize("how", ["argument", "env"])
def test_disabled_cache_never_writes(make_dataset, cache_dir, monkeypatch, how):
    root = make_dataset("png", patients=1, slices=2, size=16)
    if how == "env":
        monkeypatch.setenv("MRICT_NO_CACHE", "1")
    for _ in range(2):
        result = _load(root, cache=how != "argument")
        assert not _is_hit(result)
    assert not cache_dir.exists()


def test_cache_location_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("MRICT_CACHE_DIR", str(tmp_path / "a"))
    assert slice_cache.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("MRICT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert slice_cache.cache_dir() == tmp_path / "x" / "mrict" / "slices"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert slice_cache.cache_dir() == tmp_path / "h" / ".cache" / "mrict" / "slices"


def test_size_cap_evicts_least_recently_used(make_dataset, cache_dir, monkeypatch):
    roots = [
        make_dataset("png", patients=1, slices=2, size=24, seed=i, root=cache_dir.parent / f"d{i}")
        for i in range(3)
    ]
    _load(roots[0])
    (e0,) = _entries(cache_dir)
    monkeypatch.setenv("MRICT_CACHE_MAX_MB", str(2.5 * e0.stat().st_size / 2**20))
    _load(roots[1])
    (e1,) = [p for p in _entries(cache_dir) if p != e0]
    os.utime(e0, ns=(10**9, 10**9))
    os.utime(e1, ns=(2 * 10**9, 2 * 10**9))
    assert _is_hit(_load(roots[0]))  # marks e0 as used: e1 is now the least recently used
    _load(roots[2])
    assert len(_entries(cache_dir)) == 2 and e0.exists() and not e1.exists()
    assert _is_hit(_load(roots[0])) and not _is_hit(_load(roots[1]))
    assert slice_cache.clear_cache() == 2 and not _entries(cache_dir)


def test_lazy_slice_pickles_and_refuses_a_changed_source(make_dataset, cache_dir):
    root = make_dataset("png", patients=1, slices=1, size=16)
    fresh = _load(root)
    hit = _load(root)
    s = hit.slices[0]
    assert isinstance(s, ImageSlice) and _is_hit(hit)
    copy = pickle.loads(pickle.dumps(s))
    assert np.array_equal(copy.pixels, fresh.slices[0].pixels)
    _touch_later(s.source)
    with pytest.raises(MrictError, match="changed since"):
        _ = s.pixels
