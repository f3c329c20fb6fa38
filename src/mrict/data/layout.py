"""Discover a data set on disk: modality folders, image files and their masks.

Accepted layouts (folder names are case-insensitive)::

    DATA/MR/image_MR/*   DATA/MR/mask_MR/*   DATA/CT/image_CT/*   DATA/CT/mask_CT/*
    DATA/mri/images/*    DATA/mri/masks/*    DATA/ct/images/*     DATA/ct/masks/*

Image folders may hold sub-folders (e.g. one per patient). A mask belongs to the image with
the same relative path, or the same relative path up to the extension (``a.dcm`` <-> ``a.png``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mrict.data.io import is_image_file
from mrict.data.patient_ids import strip_suffix
from mrict.errors import MrictError

MODALITIES = ("CT", "MR")
_MODALITY_DIRS = {"CT": ("ct",), "MR": ("mr", "mri")}
_IMAGE_DIRS = {"CT": ("image_ct", "images", "image"), "MR": ("image_mr", "images", "image")}
_MASK_DIRS = {"CT": ("mask_ct", "masks", "mask"), "MR": ("mask_mr", "masks", "mask")}


@dataclass(frozen=True)
class ImageItem:
    """One image file (or NIfTI volume) and its mask file, if any."""

    image: Path
    mask: Path | None


@dataclass
class DatasetIndex:
    """The files of a data set, per modality ("CT", "MR")."""

    root: Path
    modalities: dict[str, list[ImageItem]] = field(default_factory=dict)
    image_dirs: dict[str, Path] = field(default_factory=dict)
    mask_dirs: dict[str, Path | None] = field(default_factory=dict)


def _child(parent: Path, names: tuple[str, ...]) -> Path | None:
    if not parent.is_dir():
        return None
    children = {p.name.lower(): p for p in parent.iterdir() if p.is_dir()}
    for name in names:
        if name in children:
            return children[name]
    return None


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_image_file(p))


def _key(path: Path, base: Path) -> str:
    rel = path.relative_to(base)
    return str(rel.parent / strip_suffix(rel.name)).lower()


def find_modality_dirs(root: Path, modality: str) -> tuple[Path, Path | None] | None:
    """(image folder, mask folder or None) of ``modality`` under ``root``, or None."""
    mod_dir = _child(root, _MODALITY_DIRS[modality])
    if mod_dir is None:
        return None
    image_dir = _child(mod_dir, _IMAGE_DIRS[modality])
    if image_dir is None:
        return None
    return image_dir, _child(mod_dir, _MASK_DIRS[modality])


def discover(root: str | Path) -> DatasetIndex:
    """Index the data set under ``root``; raise :class:`MrictError` if there is none."""
    root = Path(root)
    if not root.exists():
        raise MrictError("data folder not found", root)
    if not root.is_dir():
        raise MrictError("not a folder", root)
    index = DatasetIndex(root=root)
    for modality in MODALITIES:
        dirs = find_modality_dirs(root, modality)
        if dirs is None:
            continue
        image_dir, mask_dir = dirs
        masks = {_key(p, mask_dir): p for p in _files(mask_dir)} if mask_dir else {}
        items = [ImageItem(p, masks.get(_key(p, image_dir))) for p in _files(image_dir)]
        index.modalities[modality] = items
        index.image_dirs[modality] = image_dir
        index.mask_dirs[modality] = mask_dir
    if not index.modalities:
        raise MrictError(
            "no data set found: expected MR/image_MR, CT/image_CT (with mask_MR, mask_CT) "
            "or mri/images, ct/images (with masks)",
            root,
        )
    if not any(index.modalities.values()):
        raise MrictError("the data set folders hold no image files", root)
    return index


def modality_items(index: DatasetIndex, modality: str) -> list[ImageItem]:
    """The items of ``modality``; :class:`MrictError` if the modality is missing or empty."""
    modality = modality.upper()
    if modality not in MODALITIES:
        raise MrictError(f"unknown modality {modality!r} (use CT or MR)")
    if modality not in index.modalities:
        raise MrictError(f"no {modality} folder in the data set", index.root)
    items = index.modalities[modality]
    if not items:
        raise MrictError(f"the {modality} image folder holds no images", index.image_dirs[modality])
    return items
