"""Export labelled real and/or CycleGAN-translated slices as an nnU-Net v2 raw data set.

Layout (nnU-Net v2 "dataset format")::

    OUT/DatasetNNN_Name/
        dataset.json        channel_names {"0": "CT" | "MRI"}, labels {"background": 0,
                            "tumour": 1}, numTraining, file_ending ".nii.gz", provenance
        imagesTr/CASE_0000.nii.gz
        labelsTr/CASE.nii.gz
        mrict_cases.json    per case: origin (real / translated), patient, source file, slice

One case per 2-D slice: a NIfTI volume of shape (X, Y, 1), stored in RAS like every NIfTI
mrict writes (``mrict.data.nifti_io.write_nifti``; reading it back gives the source slice),
with the source's in-plane spacing and slice thickness in mm (DICOM PixelSpacing /
SliceThickness, NIfTI zooms; 1 mm for PNG/TIFF). nnU-Net then plans a 2-D configuration,
and a patient's slices never need to be contiguous or of one size. Image and label share
shape and affine. Images: CT in HU, clipped to the contract's [-1024, 3000] HU (int16); MRI
as float32 intensities (real: scanner units; translated: [0, 4095] as ``mrict translate``
writes them; nnU-Net z-scores MRI per image). Labels: uint8 {0, 1}.

Case ids are ``real_<patient>_<k>`` and ``translated_<patient>_<k>`` (``k`` counts the
patient's exported slices), with patient ids reduced to letters, digits and ``-`` (plus a
short hash when that changed them), so ids are unique and safe as file names. Only slices
with a mask are exported. With ``split="train"`` (the default) only train-split patients
(:func:`mrict.data.splits.split_patients` with the run's split seed) are exported, for the
real target slices and for the translated source slices alike, and a translated source
patient whose id is a target val/test patient is left out too, so no test patient reaches
nnU-Net training.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mrict.data.datasets import SliceSet, load_modality, normalise, read_item
from mrict.data.geometry import from_network, to_network
from mrict.data.intensity import HU_MAX, HU_MIN
from mrict.data.layout import ImageItem, discover, modality_items
from mrict.data.nifti_io import write_nifti
from mrict.data.slice import ImageSlice
from mrict.data.splits import check_disjoint, split_patients
from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_write_text
from mrict.runtime.outputs import check_not_input, check_writable

FILE_ENDING = ".nii.gz"
LABELS = {"background": 0, "tumour": 1}
CHANNEL_NAMES = {"CT": "CT", "MR": "MRI"}
PROVENANCE = "mrict_cases.json"
SOURCES = ("real", "translated", "both")
SPLITS = ("train", "all")
OTHER = {"CT": "MR", "MR": "CT"}
#: image size at which slices are listed (and cached) when no CycleGAN sets one
LIST_SIZE = 256
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class CaseInfo:
    """Where one exported case came from."""

    case: str
    origin: str  # "real" | "translated"
    patient: str
    modality: str  # modality of the slice it was made from
    file: str  # source image file, relative to the data set
    slice: int
    spacing_mm: tuple[float, float, float]  # (rows, columns, thickness)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``DatasetNNN_Name`` (NNN: three digits, 1..999; name: letters, digits, ``_``, ``-``)."""
    if not 1 <= int(dataset_id) <= 999:
        raise MrictError(f"--dataset-id must be 1..999 (three digits), got {dataset_id}")
    if not _NAME.match(name):
        raise MrictError(f"dataset name {name!r} must be letters, digits, '_' or '-' (<= 64)")
    return f"Dataset{int(dataset_id):03d}_{name}"


def safe_id(patient: str) -> str:
    """A file-name-safe, unique token for a patient id."""
    clean = re.sub(r"[^A-Za-z0-9-]+", "-", patient).strip("-")[:40]
    if clean != patient:
        clean = f"{clean}-{hashlib.sha1(patient.encode()).hexdigest()[:6]}".lstrip("-")
    return clean


def slice_spacing(s: ImageSlice) -> tuple[float, float, float]:
    """(row, column, thickness) spacing of a slice in mm; 1 mm where the file has none."""
    row = col = thick = 1.0
    if s.fmt == "dicom":
        h = s.meta.get("header")
        spacing, thickness = None, None
        if h is not None:
            spacing, thickness = h.get("PixelSpacing"), h.get("SliceThickness")
            groups = h.get("SharedFunctionalGroupsSequence")
            if spacing is None and groups and "PixelMeasuresSequence" in groups[0]:
                measures = groups[0].PixelMeasuresSequence[0]
                spacing = measures.get("PixelSpacing")
                thickness = measures.get("SliceThickness", thickness)
        try:
            if spacing is not None:
                row, col = float(spacing[0]), float(spacing[1])
            if thickness not in (None, ""):
                thick = float(thickness)
        except (TypeError, ValueError, IndexError):
            row = col = thick = 1.0
    elif s.fmt == "nifti":
        zooms, ornt = s.meta.get("zooms"), s.meta.get("ornt")
        if zooms is not None and ornt is not None:
            ras = [1.0, 1.0, 1.0]
            for axis, zoom in enumerate(zooms[:3]):
                ras[int(ornt[axis][0])] = float(zoom)
            col, row, thick = ras  # image rows run along RAS y, columns along x
    out = tuple(v if np.isfinite(v) and v > 0 else 1.0 for v in (row, col, thick))
    return out  # type: ignore[return-value]


def resolve_source(
    path: str | Path, gan: str | Path | None
) -> tuple[Path, Path | None, int | None]:
    """(data set folder, CycleGAN run or None, split seed or None) of a data set or study.

    A study folder (``study.json``) names its data set; its CycleGAN run is the one its
    results name, else ``STUDY/gan``; ``gan`` overrides either.
    """
    path = Path(path)
    if not path.exists():
        raise MrictError("data set or study folder not found", path)
    marker = path / "study.json"
    if not marker.is_file():
        return path, Path(gan) if gan else None, None
    try:
        study = json.loads(marker.read_text("utf-8"))
        data = Path(study["data"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MrictError("unreadable study.json (no data set named)", marker) from exc
    info: dict[str, Any] = {}
    results = path / "results.json"
    if results.is_file():
        try:
            info = json.loads(results.read_text("utf-8")).get("info", {}) or {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            info = {}
    run = Path(gan) if gan else Path(info["gan_run"]) if info.get("gan_run") else path / "gan"
    seed = info.get("split_seed")
    return data, run, int(seed) if seed is not None else None


def _patients_by_file(full: SliceSet) -> dict[Path, str]:
    return {Path(s.source).resolve(): p for s, p in zip(full.slices, full.patient_ids, strict=True)}


def _labelled_items(
    data: Path, modality: str, files: dict[Path, str], keep: set[str]
) -> list[tuple[ImageItem, str]]:
    """(item, patient) of the labelled files of the kept patients, in data-set order."""
    out = []
    for item in modality_items(discover(data), modality):
        patient = files.get(item.image.resolve())
        if item.mask is not None and patient in keep:
            out.append((item, patient))
    return out


def _translator(
    gan_run: Path, source: str, device: str | None, batch_size: int
) -> Callable[[list[ImageSlice]], list[np.ndarray]]:
    """Native source slices -> translated slices in native target units at the same size."""
    from mrict.translation.translate import load_generators, translate_array, unit_to_native

    target = OTHER[source]
    generator = load_generators(gan_run, device)["mr2ct" if source == "MR" else "ct2mr"]
    size = int(generator.image_size)

    def translate(slices: list[ImageSlice]) -> list[np.ndarray]:
        units = np.stack([to_network(normalise(s.pixels, source)[0], size, -1.0) for s in slices])
        fake = translate_array(generator, units, batch_size)
        out = []
        for s, f in zip(slices, fake, strict=True):
            back = from_network(f, s.shape)
            out.append(unit_to_native(back, target, None))
        return out

    return translate


def _write_case(
    folder: Path, case: str, image: np.ndarray, mask: np.ndarray, spacing: tuple, target: str
) -> None:
    """imagesTr/CASE_0000.nii.gz and labelsTr/CASE.nii.gz with one affine."""
    row, col, thick = spacing
    affine = np.diag([col, row, thick, 1.0])
    if target == "CT":
        pixels, dtype = np.clip(image, HU_MIN, HU_MAX), "int16"
    else:
        pixels, dtype = np.asarray(image, np.float32), "float32"
    write_nifti(
        folder / "imagesTr" / f"{case}_0000{FILE_ENDING}", pixels[None], affine, dtype=dtype
    )
    label = (np.asarray(mask) > 0).astype(np.uint8)
    write_nifti(folder / "labelsTr" / f"{case}{FILE_ENDING}", label[None], affine, dtype="uint8")


def _check_destination(out: Path, folder_name: str, inputs: list[Path], overwrite: bool) -> Path:
    check_not_input(out / folder_name, inputs)
    if out.exists() and not out.is_dir():
        raise MrictError("output exists and is not a folder", out)
    target = out / folder_name
    prefix = folder_name.split("_", 1)[0] + "_"  # DatasetNNN_: nnU-Net finds data sets by id
    if out.is_dir():
        for other in out.iterdir():
            if other.is_dir() and other.name.startswith(prefix) and other.name != folder_name:
                raise MrictError(
                    f"nnU-Net dataset id {prefix[len('Dataset') : -1]} is already used by "
                    f"{other.name}; choose another --dataset-id",
                    out,
                )
    if target.exists() and not target.is_dir():
        raise MrictError("output exists and is not a folder", target)
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise MrictError("output folder is not empty; pass --overwrite to replace it", target)
    check_writable(out)
    return target


def export_nnunet(
    data_or_study: str | Path,
    out: str | Path,
    *,
    target: str,
    source: str = "both",
    gan: str | Path | None = None,
    dataset_id: int = 501,
    name: str | None = None,
    split: str = "train",
    seed: int | None = None,
    overwrite: bool = False,
    device: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> Path:
    """Write ``OUT/DatasetNNN_Name`` (see the module docstring); return that folder.

    ``target``: "CT" or "MR", the modality nnU-Net will segment. ``source``: "real" (the
    target's labelled slices), "translated" (the other modality's labelled slices through
    the CycleGAN ``gan``, with their masks) or "both". ``split``: "train" or "all".
    ``seed``: the patient split seed (default: the study's, else the CycleGAN run's, else
    0). The folder is built under a hidden staging name in ``out`` and renamed into place;
    an existing non-empty one is replaced only with ``overwrite``.
    """
    target = target.upper()
    target = "MR" if target == "MRI" else target
    if target not in ("CT", "MR"):
        raise MrictError(f"unknown --target {target!r} (use CT or MR)")
    if source not in SOURCES:
        raise MrictError(f"unknown --source {source!r} (use real, translated or both)")
    if split not in SPLITS:
        raise MrictError(f"unknown --split {split!r} (use train or all)")
    if batch_size < 1:
        raise MrictError(f"batch size must be >= 1, got {batch_size}")
    data, gan_run, study_seed = resolve_source(data_or_study, gan)
    translated = source in ("translated", "both")
    if translated and gan_run is None:
        raise MrictError(
            f"--source {source} needs a CycleGAN run: pass --gan RUN or a study folder",
            data_or_study,
        )
    gan_meta: dict[str, Any] = {}
    if translated and gan_run is not None:
        from mrict.translation.translate import read_run_meta

        gan_meta = read_run_meta(gan_run)
    gan_seed = gan_meta.get("config", {}).get("split_seed") if gan_meta else None
    split_seed = seed if seed is not None else study_seed if study_seed is not None else gan_seed
    split_seed = int(split_seed) if split_seed is not None else 0
    if translated and split == "train" and gan_seed is not None and int(gan_seed) != split_seed:
        raise MrictError(
            f"the CycleGAN run used split seed {gan_seed}, the export {split_seed}; "
            "test patients could have been seen in its training",
            gan_run,
        )
    tag = {"real": "Real", "translated": "Translated", "both": "RealTranslated"}[source]
    folder_name = dataset_folder_name(dataset_id, name or f"Mrict{target}{tag}")
    out = Path(out)
    inputs = [data, *([gan_run] if translated and gan_run is not None else [])]
    final = _check_destination(out, folder_name, inputs, overwrite)

    size = int(gan_meta.get("image_size") or LIST_SIZE)
    plan: list[tuple[str, str, list[tuple[ImageItem, str]]]] = []  # (origin, modality, items)
    tgt_full = load_modality(data, target, size=size, progress=progress)
    tgt_splits = split_patients(tgt_full.patients(), seed=split_seed)
    check_disjoint(tgt_splits)
    held_out = set(tgt_splits["val"]) | set(tgt_splits["test"])
    if source in ("real", "both"):
        keep = set(tgt_splits["train"]) if split == "train" else set(tgt_full.patients())
        plan.append(
            ("real", target, _labelled_items(data, target, _patients_by_file(tgt_full), keep))
        )
    if translated:
        src = OTHER[target]
        src_full = load_modality(data, src, size=size, progress=progress)
        src_splits = split_patients(src_full.patients(), seed=split_seed)
        keep = set(src_splits["train"]) if split == "train" else set(src_full.patients())
        if split == "train":
            keep -= held_out  # the same person must not come back as a translated case
        plan.append(
            ("translated", src, _labelled_items(data, src, _patients_by_file(src_full), keep))
        )
    if not any(items for _, _, items in plan):
        raise MrictError(
            f"no labelled slices to export for --target {target} --source {source}", data
        )

    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder_name}.", suffix=".partial", dir=out))
    try:
        cases = _write_cases(staging, plan, data, target, gan_run, device, batch_size)
        _write_metadata(
            staging, cases, folder_name, target, source, split, split_seed, data, gan_run
        )
        _move_into_place(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _write_cases(
    staging: Path,
    plan: list[tuple[str, str, list[tuple[ImageItem, str]]]],
    data: Path,
    target: str,
    gan_run: Path | None,
    device: str | None,
    batch_size: int,
) -> list[CaseInfo]:
    cases: list[CaseInfo] = []
    counts: dict[tuple[str, str], int] = {}
    for origin, modality, items in plan:
        translate = None
        if origin == "translated" and items:
            assert gan_run is not None
            translate = _translator(gan_run, modality, device, batch_size)
        for item, patient in items:
            slices, masks = read_item(item, modality)
            assert masks is not None
            images = translate(slices) if translate else [s.pixels for s in slices]
            for s, image, mask in zip(slices, images, masks, strict=True):
                k = counts.get((origin, patient), 0)
                counts[(origin, patient)] = k + 1
                case = f"{origin}_{safe_id(patient)}_{k:03d}"
                spacing = slice_spacing(s)
                _write_case(staging, case, image, mask, spacing, target)
                try:
                    rel = str(Path(s.source).resolve().relative_to(data.resolve()))
                except ValueError:
                    rel = str(s.source)
                cases.append(CaseInfo(case, origin, patient, modality, rel, s.index, spacing))
    return cases


def _write_metadata(
    staging: Path,
    cases: list[CaseInfo],
    folder_name: str,
    target: str,
    source: str,
    split: str,
    split_seed: int,
    data: Path,
    gan_run: Path | None,
) -> None:
    from mrict import __version__

    n_real = sum(c.origin == "real" for c in cases)
    n_trans = len(cases) - n_real
    other = OTHER[target]
    dataset = {
        "channel_names": {"0": CHANNEL_NAMES[target]},
        "labels": dict(LABELS),
        "numTraining": len(cases),
        "file_ending": FILE_ENDING,
        "name": folder_name.split("_", 1)[1],
        "description": (
            f"Brain-tumour masks on {CHANNEL_NAMES[target]} slices, one 2-D case per slice: "
            f"{n_real} real {target} cases (ids real_*) and {n_trans} {target} cases "
            f"translated from {other} by a CycleGAN (ids translated_*, the {other} masks). "
            f"Per-case origin and patient: {PROVENANCE}."
        ),
        "reference": f"exported by mrict {__version__}",
        "mrict": {
            "target": target,
            "source": source,
            "split": split,
            "split_seed": split_seed,
            "real_cases": n_real,
            "translated_cases": n_trans,
            "data": str(data),
            "gan_run": str(gan_run) if gan_run is not None and n_trans else None,
            "provenance": PROVENANCE,
        },
    }
    atomic_write_text(staging / "dataset.json", json.dumps(dataset, indent=1) + "\n")
    provenance = {
        "target": target,
        "split": split,
        "split_seed": split_seed,
        "cases": [asdict(c) for c in cases],
    }
    atomic_write_text(staging / PROVENANCE, json.dumps(provenance, indent=1) + "\n")


def _move_into_place(staging: Path, final: Path) -> None:
    """Rename the finished staging folder onto ``final`` (an old one is removed after)."""
    old: Path | None = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    try:
        os.replace(staging, final)
    except OSError:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
