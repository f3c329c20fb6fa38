"""``mrict simulate``: write the built-in data set (unpaired MRI/CT patients with tumour
masks, plus a paired test set rendered in both modalities from the same anatomy)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mrict import __version__
from mrict.data.io import write_dicom, write_nifti, write_png
from mrict.data.raster_io import native_to_stored
from mrict.errors import MrictError
from mrict.phantom.anatomy import (
    FOV_MM,
    PatientAnatomy,
    atlas_extent_mm,
    make_patient,
    max_slices,
)
from mrict.phantom.atlas import LABEL_NAMES
from mrict.phantom.fractions import atlas_fractions, smoothing_for
from mrict.phantom.render import (
    MR_CONTRASTS,
    bias_field,
    render_ct,
    render_mri,
    sample_ct_protocol,
    sample_mr_protocol,
)
from mrict.phantom.tissues import HU_RANGES, PD, T1_MS, T2_MS
from mrict.runtime.atomic import atomic_write_text
from mrict.runtime.progress import progress_bar

OutputFormat = Literal["dicom", "nifti", "png"]
_GROUP_CODES = {"MR": 1, "CT": 2, "PT": 3, "PV": 4}
#: groups rendered in both modalities from one anatomy, and their folders
PAIRED_GROUPS = {"PT": "paired_test", "PV": "paired_val"}


@dataclass(frozen=True)
class SimulationParams:
    """Parameters of a simulated data set (sizes in pixels, counts in patients/slices)."""

    mri_patients: int = 20
    ct_patients: int = 20
    test_patients: int = 6
    #: paired validation patients (both modalities, disjoint from the test patients): for
    #: choosing translation checkpoints without touching the test set
    val_patients: int = 4
    slices_per_patient: int = 8
    #: distance between slice centres = slice thickness (contiguous slices), mm
    slice_spacing_mm: float = 3.0
    size: int = 256
    seed: int = 0
    fmt: OutputFormat = "dicom"
    mr_contrast: str = "t1c"
    tumour_free_fraction: float = 0.2
    oedema_masks: bool = False
    ct_contrast: bool = True

    def validate(self) -> None:
        for name in ("mri_patients", "ct_patients", "test_patients", "val_patients"):
            if getattr(self, name) < 0:
                raise MrictError(f"--{name.replace('_', '-')} must be >= 0")
        if self.mri_patients + self.ct_patients + self.test_patients == 0:
            raise MrictError("nothing to simulate: all patient counts are 0")
        if not 1 <= self.slices_per_patient <= 60:
            raise MrictError("--slices-per-patient must be between 1 and 60")
        if not 1.0 <= self.slice_spacing_mm <= 5.0:
            raise MrictError("--slice-spacing must be between 1 and 5 mm")
        fit = max_slices(self.slice_spacing_mm)
        if self.slices_per_patient > fit:
            raise MrictError(
                f"{self.slices_per_patient} slices {self.slice_spacing_mm:g} mm apart do not fit "
                f"in the atlas's {atlas_extent_mm():g} mm axial extent: use at most {fit} "
                "slices or a smaller --slice-spacing"
            )
        if not 32 <= self.size <= 1024:
            raise MrictError("--size must be between 32 and 1024 pixels")
        if self.fmt not in ("dicom", "nifti", "png"):
            raise MrictError(f"unknown --format {self.fmt!r} (dicom, nifti or png)")
        if self.mr_contrast not in MR_CONTRASTS:
            raise MrictError(
                f"unknown --mr-contrast {self.mr_contrast!r} (choose from {', '.join(MR_CONTRASTS)})"
            )
        if not 0.0 <= self.tumour_free_fraction <= 1.0:
            raise MrictError("--tumour-free-fraction must be in [0, 1]")


def default_workers() -> int:
    """Rendering processes when none is asked for: the CPU count, at most 4."""
    return min(4, os.cpu_count() or 1)


def _rng(seed: int, group: str, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, _GROUP_CODES[group], index, stream])


def _render_patient(params: SimulationParams, group: str, index: int) -> dict[str, Any]:
    """Anatomy and images of one patient: MR and/or CT depending on its group."""
    anatomy = make_patient(
        _rng(params.seed, group, index, 0),
        params.size,
        params.slices_per_patient,
        slice_spacing_mm=params.slice_spacing_mm,
        tumour_free_fraction=params.tumour_free_fraction,
    )
    lesions = anatomy.params["tumour"]["lesions"]
    enhancing = bool(lesions[0]["enhancing"]) if lesions else True
    fractions, texture = anatomy.fractions, anatomy.texture
    assert fractions is not None and texture is not None
    out: dict[str, Any] = {"anatomy": anatomy}
    if group in ("MR", "PT", "PV"):
        rng = _rng(params.seed, group, index, 1)
        protocol = sample_mr_protocol(rng, params.mr_contrast, params.size, enhancing)
        bias = bias_field(protocol, params.size)
        out["MR"] = np.stack(
            [
                render_mri(fractions[k], texture[:, k], protocol, rng, bias)
                for k in range(len(fractions))
            ]
        )
        out["mr_protocol"] = protocol
    if group in ("CT", "PT", "PV"):
        rng = _rng(params.seed, group, index, 2)
        protocol = sample_ct_protocol(
            rng,
            params.size,
            params.ct_contrast,
            thickness_mm=params.slice_spacing_mm,
            enhancing=enhancing,
        )
        out["CT"] = np.stack(
            [
                render_ct(fractions[k], texture[:, k], protocol, rng, anatomy.spacing_mm)
                for k in range(len(fractions))
            ]
        )
        out["ct_protocol"] = protocol
    anatomy.release()  # the fractions are large; only masks and parameters leave this process
    return out


def _write_images(
    folder: Path,
    pid: str,
    modality: str,
    images: np.ndarray,
    anatomy: PatientAnatomy,
    params: SimulationParams,
) -> None:
    if params.fmt == "nifti":
        affine = np.diag([anatomy.spacing_mm, anatomy.spacing_mm, anatomy.thickness_mm, 1.0])
        dtype = "int16" if modality == "CT" else "uint16"
        write_nifti(folder / f"{pid}.nii.gz", images, affine, dtype=dtype)
        return
    for k, img in enumerate(images):
        name = f"{pid}_{k:03d}"
        if params.fmt == "dicom":
            write_dicom(
                folder / f"{name}.dcm",
                img,
                modality=modality,
                patient_id=pid,
                pixel_spacing=(anatomy.spacing_mm, anatomy.spacing_mm),
                slice_index=k,
                slice_thickness=anatomy.thickness_mm,
                description=f"mrict phantom {modality}",
                uid_entropy=[f"mrict-phantom-{params.seed}", pid, modality],
                derived=False,
            )
        else:
            write_png(folder / f"{name}.png", native_to_stored(img, 16, modality), bits=16)


def _write_masks(
    folder: Path, pid: str, masks: np.ndarray, anatomy: PatientAnatomy, params: SimulationParams
) -> None:
    if params.fmt == "nifti":
        affine = np.diag([anatomy.spacing_mm, anatomy.spacing_mm, anatomy.thickness_mm, 1.0])
        write_nifti(folder / f"{pid}.nii.gz", masks, affine, dtype="uint8")
        return
    for k, m in enumerate(masks):
        write_png(folder / f"{pid}_{k:03d}.png", m.astype(np.uint8) * 255)


def _prepare_out(out: Path, overwrite: bool) -> Path:
    """Check ``out`` and return a sibling staging folder to render into."""
    if out.exists() and not out.is_dir():
        raise MrictError("output exists and is not a folder", out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MrictError("output folder is not empty (pass --overwrite to replace it)", out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.parent / f".{out.name}.partial-{os.getpid()}"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
    except OSError as exc:
        raise MrictError(f"cannot write here: {exc.strerror or exc}", out.parent) from exc
    return staging


def _write_patient(
    params: SimulationParams, staging: Path, group: str, index: int
) -> dict[str, Any]:
    """Render one patient, write its files under ``staging`` and return its manifest entry
    (and, for paired test patients, the preview slice with the most tumour)."""
    result = _render_patient(params, group, index)
    pid = f"{group}{index + 1:03d}"
    anatomy: PatientAnatomy = result["anatomy"]
    preview = None
    if group in PAIRED_GROUPS:
        base = staging / PAIRED_GROUPS[group]
        _write_images(base / "MR", pid, "MR", result["MR"], anatomy, params)
        _write_images(base / "CT", pid, "CT", result["CT"], anatomy, params)
        _write_masks(base / "mask", pid, anatomy.tumour, anatomy, params)
        if params.oedema_masks:
            _write_masks(base / "oedema", pid, anatomy.oedema, anatomy, params)
        if group == "PT":
            k = int(np.argmax(anatomy.tumour.reshape(len(anatomy.tumour), -1).sum(1)))
            preview = {
                "id": pid,
                "MR": result["MR"][k],
                "CT": result["CT"][k],
                "mask": anatomy.tumour[k],
            }
    else:
        base = staging / group
        _write_images(base / f"image_{group}", pid, group, result[group], anatomy, params)
        _write_masks(base / f"mask_{group}", pid, anatomy.tumour, anatomy, params)
        if params.oedema_masks:
            _write_masks(base / f"oedema_{group}", pid, anatomy.oedema, anatomy, params)
    entry = {
        "id": pid,
        "group": {"MR": "mri", "CT": "ct", **PAIRED_GROUPS}[group],
        "slices": params.slices_per_patient,
        "spacing_mm": anatomy.spacing_mm,
        "thickness_mm": anatomy.thickness_mm,
        "anatomy": anatomy.params,
        "tumour_pixels_per_slice": anatomy.tumour.reshape(len(anatomy.tumour), -1).sum(1).tolist(),
    }
    for key in ("mr_protocol", "ct_protocol"):
        if key in result:
            entry[key] = result[key]
    return {"entry": entry, "preview": preview}


def _write_job(job: tuple[SimulationParams, Path, str, int]) -> dict[str, Any]:
    return _write_patient(*job)


def _results(params: SimulationParams, staging: Path, jobs: list[tuple[str, int]], workers: int):
    """Each patient's manifest entry and preview, in job order, rendered and written by
    ``workers`` processes (1: in this process)."""
    if workers <= 1 or len(jobs) < 4:
        for group, i in jobs:
            yield _write_patient(params, staging, group, i)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # smooth the atlas here, once: the forked workers share it instead of each redoing it
    atlas_fractions(*smoothing_for(FOV_MM / params.size, params.slice_spacing_mm))
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        yield from pool.map(_write_job, [(params, staging, g, i) for g, i in jobs], chunksize=2)


def simulate_dataset(
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
    **kwargs: Any,
) -> Path:
    """Render the data set described by ``SimulationParams(**kwargs)`` into ``out``.

    Layout: ``out/MR/{image_MR,mask_MR}``, ``out/CT/{image_CT,mask_CT}`` (disjoint patients
    MR001.., CT001..), ``out/paired_test/{MR,CT,mask}`` (patients PT001.. in both
    modalities, same file names), ``out/paired_val/{MR,CT,mask}`` (patients PV001.., the
    same for checkpoint selection), ``out/manifest.json`` and ``out/preview.png``. Everything
    is rendered into a staging folder and moved into place at the end, so an interrupted
    run never leaves a data set that looks complete. The same seed gives byte-identical files
    whatever the number of ``workers`` (rendering processes; default: the CPU count, max 4).
    """
    params = SimulationParams(**kwargs)
    params.validate()
    out = Path(out)
    staging = _prepare_out(out, overwrite)
    ext = {"dicom": "dcm", "nifti": "nii.gz", "png": "png"}[params.fmt]
    jobs = (
        [("MR", i) for i in range(params.mri_patients)]
        + [("CT", i) for i in range(params.ct_patients)]
        + [("PT", i) for i in range(params.test_patients)]
        + [("PV", i) for i in range(params.val_patients)]
    )
    manifest: dict[str, Any] = {
        "generator": f"mrict {__version__} phantom",
        "parameters": asdict(params),
        "file_extension": ext,
        "labels": list(LABEL_NAMES),
        "literature_tissue_values": {
            "T1_ms": T1_MS.tolist(),
            "T2_ms": T2_MS.tolist(),
            "PD": PD.tolist(),
            "HU_ranges": HU_RANGES.tolist(),
        },
        "mask": "tumour = solid part + necrotic core (oedema excluded)",
        "patients": [],
    }
    previews: list[dict[str, Any]] = []
    bar = progress_bar(progress, "simulating")
    try:
        with bar:
            task = bar.add_task("simulate", total=len(jobs))
            n_workers = workers if workers is not None else default_workers()
            for result in _results(params, staging, jobs, n_workers):
                manifest["patients"].append(result["entry"])
                if result["preview"] is not None and len(previews) < 3:
                    previews.append(result["preview"])
                bar.advance(task)
        if previews:
            from mrict.phantom.preview import save_preview

            save_preview(previews, staging / "preview.png")
        atomic_write_text(
            staging / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True, default=float)
        )
        if out.exists():
            for child in ("MR", "CT", *PAIRED_GROUPS.values(), "manifest.json", "preview.png"):
                target = out / child
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            for child in staging.iterdir():
                child.replace(out / child.name)
            staging.rmdir()
        else:
            staging.replace(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
