"""Slices restored from the prepared-slice cache: their pixels and header are read from the
source file only when first used, and only if the file has not changed since."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mrict.data.slice import ImageSlice
from mrict.errors import MrictError


def file_fingerprint(path: Path, parents: dict[Path, Path] | None = None) -> list[Any]:
    """``[resolved path, size bytes, mtime_ns]``; ``parents`` memoises resolved folders."""
    st = path.stat()
    if parents is None or path.is_symlink():
        resolved = path.resolve()
    else:
        if path.parent not in parents:
            parents[path.parent] = path.parent.resolve()
        resolved = parents[path.parent] / path.name
    return [str(resolved), st.st_size, st.st_mtime_ns]


class SourceReader:
    """Reads source slices on demand for :class:`LazySlice` (remembers the last file read),
    refusing a file whose size or modification time changed since the cache was checked."""

    def __init__(self, modality: str, stats: dict[str, tuple[int, int]]) -> None:
        self.modality = modality
        self.stats = stats
        self._last: tuple[Path, list[ImageSlice]] | None = None

    def read(self, source: Path, index: int, patient_id: str) -> ImageSlice:
        from mrict.data.io import read_slices

        if self._last is None or self._last[0] != source:
            try:
                _, size, mtime = file_fingerprint(source)
            except OSError as exc:
                raise MrictError("file vanished since the data set was loaded", source) from exc
            expected = self.stats.get(str(source.resolve()))
            if expected is not None and expected != (size, mtime):
                raise MrictError(
                    "file changed since the data set was loaded; load it again", source
                )
            self._last = (source, read_slices(source, self.modality))
        for s in self._last[1]:
            if s.index == index and s.patient_id == patient_id:
                return s
        raise MrictError(f"slice {index} not found; the file changed since it was loaded", source)


class LazySlice(ImageSlice):
    """An :class:`ImageSlice` restored from the cache: ``patient_id``, ``source``, ``index``,
    ``fmt`` and ``shape`` are known at once; ``pixels`` (H, W) and ``meta`` are read from the
    source file on first use (so writing results back works as after a fresh read)."""

    def __init__(
        self,
        reader: SourceReader,
        patient_id: str,
        source: Path,
        index: int,
        fmt: Any,
        shape: tuple[int, int],
    ) -> None:
        self.patient_id = patient_id
        self.source = source
        self.index = index
        self.fmt = fmt
        self._shape = shape
        self._reader = reader
        self._pixels: np.ndarray | None = None
        self._meta: dict[str, Any] | None = None

    def _load(self) -> None:
        s = self._reader.read(self.source, self.index, self.patient_id)
        if self._pixels is None:
            self._pixels = s.pixels
        if self._meta is None:
            self._meta = s.meta

    @property  # type: ignore[override]
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            self._load()
        assert self._pixels is not None
        return self._pixels

    @pixels.setter
    def pixels(self, value: np.ndarray) -> None:
        self._pixels = value

    @property  # type: ignore[override]
    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            self._load()
        assert self._meta is not None
        return self._meta

    @meta.setter
    def meta(self, value: dict[str, Any]) -> None:
        self._meta = value

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def __repr__(self) -> str:
        return (
            f"LazySlice(patient_id={self.patient_id!r}, source={self.source!r}, "
            f"index={self.index}, fmt={self.fmt!r}, shape={self._shape})"
        )
