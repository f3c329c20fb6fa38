"""Load a modality of a data set into memory, validated and prepared for the networks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from mrict.data import cache as slice_cache
from mrict.data.geometry import pad_to_square, resize_batch
from mrict.data.intensity import hu_to_unit, normalise_mri
from mrict.data.io import read_slices
from mrict.data.layout import ImageItem, discover, modality_items
from mrict.data.slice import ImageSlice
from mrict.errors import MrictError
from mrict.runtime.progress import progress_bar

_err = Console(stderr=True)


def binarise_mask(values: np.ndarray, path: Path, threshold: float | None) -> np.ndarray:
    """Raw mask values (S, H, W) -> uint8 {0, 1}.

    With ``threshold``: ``values > threshold``. Without: the mask must hold at most two
    distinct values; the larger one is the foreground (0/1, 0/255, ...).
    """
    if threshold is not None:
        return (values > threshold).astype(np.uint8)
    distinct = np.unique(values)
    if distinct.size > 2:
        raise MrictError(
            f"mask is not binary ({distinct.size} distinct values); pass --mask-threshold to binarise it",
            path,
        )
    if distinct.size == 2:
        return (values == distinct.max()).astype(np.uint8)
    return (values > 0).astype(np.uint8)


def read_item(
    item: ImageItem, modality: str, mask_threshold: float | None = None
) -> tuple[list[ImageSlice], np.ndarray | None]:
    """Read and validate one image file and its mask: ``(slices, masks (S, H, W) or None)``."""
    slices = read_slices(item.image, modality)
    if not slices:
        raise MrictError("file holds no slices", item.image)
    if item.mask is None:
        return slices, None
    mask_slices = read_slices(item.mask, None)
    if len(mask_slices) != len(slices):
        raise MrictError(
            f"mask has {len(mask_slices)} slices but its image {item.image.name} has {len(slices)}",
            item.mask,
        )
    for s, m in zip(slices, mask_slices, strict=True):
        if s.shape != m.shape:
            raise MrictError(
                f"mask size {m.shape[0]}x{m.shape[1]} differs from image size {s.shape[0]}x{s.shape[1]}",
                item.mask,
            )
    raw = np.stack([m.pixels for m in mask_slices])
    return slices, binarise_mask(raw, item.mask, mask_threshold)


def normalise(pixels: np.ndarray, modality: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Native slice -> [-1, 1] with the parameters needed to invert it."""
    if modality == "CT":
        return hu_to_unit(pixels).astype(np.float32), {"kind": "hu"}
    unit, (lo, hi) = normalise_mri(pixels)
    return unit, {"kind": "mri", "lo": lo, "hi": hi}


@dataclass
class SliceSet:
    """Prepared slices of one modality.

    ``images`` (N, H, W) float32 in [-1, 1]; ``masks`` (N, H, W) uint8 {0, 1} (zeros where
    ``has_mask`` is False); ``patient_ids`` and ``slices`` (the source slices, for writing
    back) per row; ``norm`` the per-slice intensity mapping. After a load from the slice
    cache the ``slices`` are :class:`~mrict.data.cache.LazySlice` objects, which read their
    native ``pixels`` and ``meta`` from the source file on first use.
    """

    modality: str
    images: np.ndarray
    masks: np.ndarray
    has_mask: np.ndarray
    patient_ids: list[str]
    slices: list[ImageSlice] = field(default_factory=list)
    norm: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def patients(self) -> list[str]:
        """Sorted unique patient ids."""
        return sorted(set(self.patient_ids))

    def take(self, rows: Iterable[int]) -> SliceSet:
        """Subset by row indices."""
        idx = np.asarray(list(rows), dtype=np.int64)
        return SliceSet(
            self.modality,
            self.images[idx],
            self.masks[idx],
            self.has_mask[idx],
            [self.patient_ids[i] for i in idx],
            [self.slices[i] for i in idx] if self.slices else [],
            [self.norm[i] for i in idx] if self.norm else [],
        )

    def select(self, patients: Iterable[str]) -> SliceSet:
        """The slices of the given patients."""
        wanted = set(patients)
        return self.take(i for i, p in enumerate(self.patient_ids) if p in wanted)

    def labelled(self) -> SliceSet:
        """The slices that have a mask."""
        return self.take(np.flatnonzero(self.has_mask))


def load_modality(
    root: str | Path,
    modality: str,
    *,
    size: int = 256,
    skip_bad: bool = False,
    mask_threshold: float | None = None,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
    cache: bool = True,
) -> SliceSet:
    """Read, validate and prepare every slice of ``modality`` ("CT" or "MR") under ``root``.

    Images are normalised to [-1, 1] (HU window for CT, percentiles for MR), padded to a
    square and resized to ``size`` (anti-aliased; masks nearest). The first bad file stops
    with :class:`MrictError`, unless ``skip_bad`` where it is reported through ``warn`` and
    skipped. Rows are ordered by patient, file and slice index.

    With ``cache`` (and ``MRICT_NO_CACHE`` unset) the prepared result is stored in the
    slice cache (:mod:`mrict.data.cache`) and a later call on unchanged files with the same
    options returns it without decoding anything; the result, including the skipped-file
    warnings, is the same as a fresh read.
    """
    modality = modality.upper()
    index = discover(root)
    items = modality_items(index, modality)
    warn = warn or (lambda msg: _err.print(f"[yellow]warning:[/] {msg}", highlight=False))
    root = Path(root)
    key: str | None = None
    files = slice_cache.fingerprints(items) if slice_cache.cache_enabled(cache) else None
    if files is not None:
        key = slice_cache.cache_key(
            files,
            modality=modality,
            size=size,
            mask_threshold=mask_threshold,
            skip_bad=skip_bad,
        )
        entry = slice_cache.load_entry(key, size)
        if entry is not None:
            for exc in slice_cache.skipped_errors(entry, root):
                warn(f"skipped {exc.one_line()}")
            return SliceSet(
                modality,
                entry.images,
                entry.masks,
                entry.has_mask,
                entry.patient_ids,
                slice_cache.restore_slices(entry, root, modality, slice_cache.file_stats(files)),
                entry.norm,
            )
    result, skipped = _read_modality(
        items, modality, size, mask_threshold, skip_bad, warn, progress, index.image_dirs[modality]
    )
    if key is not None:
        entry = slice_cache.make_entry(
            result.images,
            result.masks,
            result.has_mask,
            result.slices,
            result.norm,
            skipped,
            root,
        )
        slice_cache.save_entry(key, entry, warn)
    return result


def _read_modality(
    items: list[ImageItem],
    modality: str,
    size: int,
    mask_threshold: float | None,
    skip_bad: bool,
    warn: Callable[[str], None],
    progress: bool,
    image_dir: Path,
) -> tuple[SliceSet, list[MrictError]]:
    """Decode and prepare ``items`` (see :func:`load_modality`); also returns the errors of
    the skipped files."""
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    has_mask: list[bool] = []
    slices: list[ImageSlice] = []
    norms: list[dict[str, Any]] = []
    skipped: list[MrictError] = []
    with progress_bar(progress) as bar:
        task = bar.add_task(f"reading {modality}", total=len(items))
        for item in items:
            try:
                item_slices, item_masks = read_item(item, modality, mask_threshold)
            except MrictError as exc:
                if not skip_bad:
                    raise
                warn(f"skipped {exc.one_line()}")
                skipped.append(exc)
                bar.advance(task)
                continue
            for k, s in enumerate(item_slices):
                unit, norm = normalise(s.pixels, modality)
                images.append(pad_to_square(unit, -1.0))
                m = item_masks[k] if item_masks is not None else np.zeros(s.shape, np.uint8)
                masks.append(pad_to_square(m, 0))
                has_mask.append(item_masks is not None)
                slices.append(s)
                norms.append(norm)
            bar.advance(task)
    if not slices:
        raise MrictError(f"no readable {modality} images", image_dir)
    images_out = np.empty((len(slices), size, size), np.float32)
    masks_out = np.empty((len(slices), size, size), np.uint8)
    by_side: dict[int, list[int]] = {}
    for i, img in enumerate(images):
        by_side.setdefault(img.shape[0], []).append(i)
    for rows in by_side.values():
        images_out[rows] = resize_batch(np.stack([images[i] for i in rows]), size)
        masks_out[rows] = resize_batch(
            np.stack([masks[i] for i in rows]).astype(np.float32), size, nearest=True
        ).astype(np.uint8)
    np.clip(images_out, -1.0, 1.0, out=images_out)
    order = sorted(
        range(len(slices)),
        key=lambda i: (slices[i].patient_id, str(slices[i].source), slices[i].index),
    )
    result = SliceSet(
        modality,
        images_out,
        masks_out,
        np.asarray(has_mask, dtype=bool),
        [s.patient_id for s in slices],
        slices,
        norms,
    )
    return result.take(order), skipped


class SliceDataset(torch.utils.data.Dataset):
    """Torch view of a :class:`SliceSet`: ``{"image": (1, H, W), "mask": (1, H, W)}`` float32.

    With ``augment`` a random rotation (+-30 deg), horizontal/vertical flips and a contrast
    change are applied on the fly, the geometric part identically to image and mask. The
    random draw depends only on (seed, epoch, index), so runs are reproducible whatever the
    loader order; call :meth:`set_epoch` at the start of every epoch.
    """

    def __init__(self, slice_set: SliceSet, augment: bool = False, seed: int = 0) -> None:
        self.set = slice_set
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._transform = None
        if augment:
            from mrict.data.augment import build_augment

            self._transform = build_augment()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.set)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = torch.from_numpy(self.set.images[i])[None]
        mask = torch.from_numpy(self.set.masks[i].astype(np.float32))[None]
        if self._transform is not None:
            from mrict.data.augment import apply_augment

            image, mask = apply_augment(self._transform, image, mask, (self.seed, self.epoch, i))
        return {"image": image, "mask": mask}
