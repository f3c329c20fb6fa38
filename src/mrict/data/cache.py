"""On-disk cache of prepared slices, the result of :func:`mrict.data.datasets.load_modality`.

One file per key, ``<sha256>.npz`` (plain arrays, read with ``allow_pickle=False``): the
prepared ``images`` (N, H, W) float32 in [-1, 1], ``masks`` (N, H, W) uint8, ``has_mask``
(N,) bool and ``meta``, a UTF-8 JSON document stored as a uint8 array (patient ids, the
source file and index of every row, per-slice intensity parameters, skipped-file warnings).

The key is a hash of everything the prepared result depends on: the cache format version,
the mrict version, the modality, ``size``, ``mask_threshold``, ``skip_bad`` and, for every
discovered image and mask file, its resolved path, size in bytes and modification time in
nanoseconds. Editing, adding, removing or renaming a file therefore gives a new key (an edit
that keeps both the size and the modification time is not detected).

Location: ``$MRICT_CACHE_DIR``, else ``$XDG_CACHE_HOME/mrict/slices``, else
``~/.cache/mrict/slices``. ``MRICT_NO_CACHE=1`` turns the cache off; the folder is kept under
``$MRICT_CACHE_MAX_MB`` megabytes (default 2048) by deleting the least recently used files;
deleting the folder clears it (:func:`clear_cache`). Unreadable, corrupt or mismatching
files are ignored and rewritten; an unwritable folder only disables writing, with at most
one warning per folder and process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mrict import __version__
from mrict.data.layout import ImageItem
from mrict.data.lazy_slice import LazySlice, SourceReader, file_fingerprint
from mrict.data.slice import ImageSlice
from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_path

#: bump whenever the stored layout or the preparation of slices changes
CACHE_VERSION = 2  # 2: soft-tissue CT network map
ENV_DIR = "MRICT_CACHE_DIR"
ENV_OFF = "MRICT_NO_CACHE"
ENV_MAX_MB = "MRICT_CACHE_MAX_MB"
DEFAULT_MAX_MB = 2048
SUFFIX = ".npz"
#: leftovers of interrupted writes older than this many seconds are removed when pruning
STALE_PARTIAL_S = 3600.0

_warned_dirs: set[str] = set()


def cache_dir() -> Path:
    """The cache folder (see the module docstring for the order of precedence)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mrict" / "slices"


def cache_enabled(requested: bool = True) -> bool:
    """Whether to use the cache: ``requested`` and ``MRICT_NO_CACHE`` unset (or 0/false/no)."""
    off = os.environ.get(ENV_OFF, "").strip().lower()
    return requested and off in ("", "0", "false", "no", "off")


def max_bytes() -> int:
    """The size cap of the cache folder in bytes (``MRICT_CACHE_MAX_MB``, default 2048 MB)."""
    try:
        mb = float(os.environ.get(ENV_MAX_MB, DEFAULT_MAX_MB))
    except ValueError:
        mb = DEFAULT_MAX_MB
    if not math.isfinite(mb):
        mb = DEFAULT_MAX_MB
    return max(0, int(mb * 2**20))


def fingerprints(items: Sequence[ImageItem]) -> list[list[Any]] | None:
    """``[image, mask or None]`` per item, each ``[resolved path, size bytes, mtime_ns]``;
    None when a file cannot be stat-ed (then do not cache)."""
    parents: dict[Path, Path] = {}
    try:
        return [
            [
                file_fingerprint(it.image, parents),
                None if it.mask is None else file_fingerprint(it.mask, parents),
            ]
            for it in items
        ]
    except OSError:
        return None


def cache_key(
    files: list[list[Any]],
    *,
    modality: str,
    size: int,
    mask_threshold: float | None,
    skip_bad: bool,
) -> str:
    """SHA-256 hex key of a load of the files described by :func:`fingerprints`."""
    doc = {
        "cache_version": CACHE_VERSION,
        "mrict": __version__,
        "modality": modality,
        "size": int(size),
        "mask_threshold": None if mask_threshold is None else float(mask_threshold),
        "skip_bad": bool(skip_bad),
        "files": files,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def entry_path(key: str, folder: Path | None = None) -> Path:
    """The cache file of ``key``."""
    return (folder or cache_dir()) / f"{key}{SUFFIX}"


def _relative(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root`` (as spelled by the caller), else unchanged."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


@dataclass
class Entry:
    """What a cache file holds. ``rows`` are ``[source relative to root, index, fmt,
    patient id, height, width]`` (native slice size); ``warnings`` ``[path, message]``."""

    images: np.ndarray
    masks: np.ndarray
    has_mask: np.ndarray
    patient_ids: list[str]
    rows: list[list[Any]]
    norm: list[dict[str, Any]]
    warnings: list[list[Any]]


def make_entry(
    images: np.ndarray,
    masks: np.ndarray,
    has_mask: np.ndarray,
    slices: Sequence[ImageSlice],
    norm: Sequence[dict[str, Any]],
    skipped: Sequence[MrictError],
    root: Path,
) -> Entry:
    """Build an :class:`Entry` from a fresh load under ``root``."""
    rows = [
        [_relative(s.source, root), int(s.index), s.fmt, s.patient_id, s.shape[0], s.shape[1]]
        for s in slices
    ]
    warnings = [[None if e.path is None else _relative(e.path, root), e.message] for e in skipped]
    return Entry(
        images,
        masks,
        has_mask,
        [s.patient_id for s in slices],
        rows,
        [dict(n) for n in norm],
        warnings,
    )


def skipped_errors(entry: Entry, root: Path) -> list[MrictError]:
    """The skipped-file errors of ``entry`` with paths under ``root`` again."""
    out = []
    for path, message in entry.warnings:
        if path is not None and not Path(path).is_absolute():
            path = root / path
        out.append(MrictError(message, path))
    return out


_FORMATS = ("dicom", "nifti", "png", "tiff", "jpeg")


def _valid_row(row: Any) -> bool:
    return (
        isinstance(row, list)
        and len(row) == 6
        and isinstance(row[0], str)
        and row[2] in _FORMATS
        and isinstance(row[3], str)
        and all(isinstance(v, int) and v >= 0 for v in (row[1], row[4], row[5]))
    )


def _valid_warning(w: Any) -> bool:
    return (
        isinstance(w, list)
        and len(w) == 2
        and (w[0] is None or isinstance(w[0], str))
        and isinstance(w[1], str)
    )


def _valid(meta: dict[str, Any], arrays: dict[str, np.ndarray], key: str, size: int) -> bool:
    """Whether a cache file's content is what :func:`save_entry` writes for ``key``."""
    n = meta.get("n")
    if not isinstance(n, int) or meta.get("version") != CACHE_VERSION or meta.get("key") != key:
        return False
    images, masks, has_mask = arrays["images"], arrays["masks"], arrays["has_mask"]
    return (
        images.dtype == np.float32
        and images.shape == (n, size, size)
        and masks.dtype == np.uint8
        and masks.shape == images.shape
        and has_mask.dtype == np.bool_
        and has_mask.shape == (n,)
        and all(
            isinstance(meta.get(k), list) and len(meta[k]) == n
            for k in ("patient_ids", "rows", "norm")
        )
        and all(isinstance(p, str) for p in meta["patient_ids"])
        and all(_valid_row(r) for r in meta["rows"])
        and all(isinstance(d, dict) and d.get("kind") in ("hu", "mri") for d in meta["norm"])
        and isinstance(meta.get("warnings"), list)
        and all(_valid_warning(w) for w in meta["warnings"])
        and (n == 0 or (float(images.min()) >= -1.0 and float(images.max()) <= 1.0))
        and (n == 0 or int(masks.max()) <= 1)
    )


def load_entry(key: str, size: int, folder: Path | None = None) -> Entry | None:
    """The entry stored under ``key``, or None when absent, unreadable, corrupt or not
    matching (wrong version, key, shapes, dtypes or value ranges)."""
    path = entry_path(key, folder)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("images", "masks", "has_mask", "meta")}
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
        if not _valid(meta, arrays, key, size):
            return None
        entry = Entry(
            arrays["images"],
            arrays["masks"],
            arrays["has_mask"],
            meta["patient_ids"],
            meta["rows"],
            meta["norm"],
            meta["warnings"],
        )
    except Exception:  # noqa: BLE001 - any damage to a cache file means "rebuild it"
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # mark as recently used for the size cap
    return entry


def _write_npz(target: Path, arrays: dict[str, np.ndarray]) -> None:
    with target.open("wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]


def save_entry(
    key: str,
    entry: Entry,
    warn: Callable[[str], None],
    folder: Path | None = None,
) -> Path | None:
    """Store ``entry`` under ``key`` atomically and prune the folder to the size cap (an
    entry larger than the cap is not stored).

    Never raises for file-system problems: an unwritable folder gives one warning (per
    folder and process) and no caching. Returns the written file or None.
    """
    folder = folder or cache_dir()
    meta = {
        "version": CACHE_VERSION,
        "key": key,
        "n": len(entry.patient_ids),
        "patient_ids": entry.patient_ids,
        "rows": entry.rows,
        "norm": entry.norm,
        "warnings": entry.warnings,
    }
    try:
        text = json.dumps(meta, allow_nan=True)
    except (TypeError, ValueError):  # metadata that JSON cannot hold: do not cache
        return None
    arrays = {
        "images": np.ascontiguousarray(entry.images, np.float32),
        "masks": np.ascontiguousarray(entry.masks, np.uint8),
        "has_mask": np.ascontiguousarray(entry.has_mask, np.bool_),
        "meta": np.frombuffer(text.encode("utf-8"), np.uint8),
    }
    cap = max_bytes()
    if sum(a.nbytes for a in arrays.values()) > cap:
        return None
    target = entry_path(key, folder)
    try:
        with atomic_path(target) as tmp:
            _write_npz(tmp, arrays)
        prune(folder, cap, keep=target)
    except (MrictError, OSError) as exc:
        if str(folder) not in _warned_dirs:
            _warned_dirs.add(str(folder))
            reason = exc.one_line() if isinstance(exc, MrictError) else str(exc)
            warn(f"slice cache disabled, cannot write to {folder} ({reason})")
        return None
    return target


def _entries(folder: Path) -> list[tuple[Path, os.stat_result]]:
    out = []
    for p in folder.iterdir():
        if p.name.endswith(SUFFIX) and not p.name.startswith("."):
            try:
                out.append((p, p.stat()))
            except OSError:
                continue
    return out


def prune(folder: Path, cap: int, keep: Path | None = None) -> int:
    """Delete the least recently used cache files until the folder holds at most ``cap``
    bytes (``keep`` is never deleted) and leftovers of interrupted writes older than an
    hour. Returns the number of files deleted."""
    deleted = 0
    now = time.time()
    for p in folder.glob(f".*{SUFFIX}.*.partial"):
        try:
            if now - p.stat().st_mtime > STALE_PARTIAL_S:
                p.unlink()
                deleted += 1
        except OSError:
            continue
    entries = sorted(_entries(folder), key=lambda e: e[1].st_mtime_ns)
    total = sum(st.st_size for _, st in entries)
    for p, st in entries:
        if total <= cap:
            break
        if keep is not None and p == keep:
            continue
        try:
            p.unlink()
        except OSError:
            continue
        total -= st.st_size
        deleted += 1
    return deleted


def clear_cache(folder: Path | None = None) -> int:
    """Delete every cache file in ``folder`` (default :func:`cache_dir`); returns the count."""
    folder = folder or cache_dir()
    if not folder.is_dir():
        return 0
    deleted = 0
    for p, _ in _entries(folder):
        try:
            p.unlink()
            deleted += 1
        except OSError:
            continue
    return deleted


def restore_slices(
    entry: Entry, root: Path, modality: str, stats: dict[str, tuple[int, int]]
) -> list[ImageSlice]:
    """The :class:`LazySlice` of every row of ``entry`` (sources resolved under ``root``)."""
    reader = SourceReader(modality, stats)
    out: list[ImageSlice] = []
    for rel, index, fmt, pid, h, w in entry.rows:
        source = Path(rel) if Path(rel).is_absolute() else root / rel
        out.append(LazySlice(reader, str(pid), source, int(index), fmt, (int(h), int(w))))
    return out


def file_stats(files: list[list[Any]]) -> dict[str, tuple[int, int]]:
    """``{resolved path: (size, mtime_ns)}`` of the image files of :func:`fingerprints`."""
    return {str(img[0]): (int(img[1]), int(img[2])) for img, _ in files}


__all__ = [
    "CACHE_VERSION",
    "Entry",
    "LazySlice",
    "cache_dir",
    "cache_enabled",
    "cache_key",
    "clear_cache",
    "entry_path",
    "file_stats",
    "fingerprints",
    "load_entry",
    "make_entry",
    "max_bytes",
    "prune",
    "restore_slices",
    "save_entry",
    "skipped_errors",
]
