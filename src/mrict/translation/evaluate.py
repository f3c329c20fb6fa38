"""Evaluate a trained run: fidelity on paired data (whole head and lesion-level, with the
trivial baselines in the same run), consistency/structure on unpaired data, and optionally the
Dice of real-target segmenters on translated labelled source slices."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from mrict.data.datasets import binarise_mask, normalise
from mrict.data.geometry import from_network, to_network
from mrict.data.intensity import hu_to_unit, unit_to_hu
from mrict.data.io import is_image_file, read_slices
from mrict.data.patient_ids import strip_suffix
from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_write_text
from mrict.translation import lesion_metrics as LM
from mrict.translation import metrics as M
from mrict.translation.baselines import histogram_baseline, identity_baseline
from mrict.translation.translate import load_generators, read_run_meta, translate_array

METHODS = ("model", "identity", "histogram")
PAIRED_SPLITS = ("test", "val")
SEGMENTER_SPLITS = ("val", "test")


def find_paired_dir(data: Path, split: str = "test") -> Path | None:
    """``data/paired_<split>`` (``split`` "test" or "val") if it holds MR/ and CT/ folders of
    images, else ``data`` itself if it does (whatever ``split``), else None."""
    if split not in PAIRED_SPLITS:
        raise MrictError(f"unknown paired split {split!r} (use test or val)")
    for cand in (data / f"paired_{split}", data):
        if (
            (cand / "MR").is_dir()
            and (cand / "CT").is_dir()
            and not (cand / "MR" / "image_MR").is_dir()
        ):
            return cand
    return None


Slices = list[np.ndarray]


@overload
def load_paired(
    paired_dir: Path, *, with_masks: Literal[False] = False
) -> tuple[Slices, Slices, list[str]]: ...


@overload
def load_paired(
    paired_dir: Path, *, with_masks: Literal[True]
) -> tuple[Slices, Slices, list[str], Slices | None]: ...


def load_paired(
    paired_dir: Path, *, with_masks: bool = False
) -> tuple[Slices, Slices, list[str]] | tuple[Slices, Slices, list[str], Slices | None]:
    """MR slices normalised to [-1, 1] and CT slices in HU, (H, W) each, matched by file name,
    and their labels ``name[index]``. With ``with_masks`` also the tumour masks (H, W) uint8
    {0, 1} from ``mask/`` (same names up to the extension), or None without that folder."""
    mr_files = {p.name: p for p in sorted((paired_dir / "MR").iterdir()) if is_image_file(p)}
    ct_files = {p.name: p for p in sorted((paired_dir / "CT").iterdir()) if is_image_file(p)}
    names = sorted(set(mr_files) & set(ct_files))
    if not names:
        raise MrictError(
            "no file names common to MR/ and CT/ (paired data needs identical names)", paired_dir
        )
    mask_dir = paired_dir / "mask"
    mask_files = (
        {strip_suffix(p.name): p for p in sorted(mask_dir.iterdir()) if is_image_file(p)}
        if with_masks and mask_dir.is_dir()
        else None
    )
    mr_out, ct_out, labels, mask_out = [], [], [], []
    for name in names:
        mr_sl = read_slices(mr_files[name], "MR")
        ct_sl = read_slices(ct_files[name], "CT")
        if len(mr_sl) != len(ct_sl):
            raise MrictError(f"MR has {len(mr_sl)} slices, CT has {len(ct_sl)}", ct_files[name])
        masks = _paired_masks(mask_files, ct_files[name], ct_sl) if mask_files is not None else []
        for m, c in zip(mr_sl, ct_sl, strict=True):
            if m.shape != c.shape:
                raise MrictError(
                    f"MR slice {m.shape} and CT slice {c.shape} differ in size", ct_files[name]
                )
            mr_out.append(normalise(m.pixels, "MR")[0])
            ct_out.append(c.pixels.astype(np.float32))
            labels.append(f"{name}[{m.index}]")
        mask_out += masks
    if not with_masks:
        return mr_out, ct_out, labels
    return mr_out, ct_out, labels, (mask_out if mask_files is not None else None)


def _paired_masks(mask_files: dict[str, Path], ct_file: Path, ct_slices: list) -> Slices:
    """The tumour masks of one paired CT file, checked against its slices."""
    path = mask_files.get(strip_suffix(ct_file.name))
    if path is None:
        raise MrictError(
            f"no tumour mask for this image in {ct_file.parent.parent / 'mask'}", ct_file
        )
    raw = read_slices(path, None)
    if len(raw) != len(ct_slices):
        raise MrictError(f"mask has {len(raw)} slices, its image {len(ct_slices)}", path)
    for m, c in zip(raw, ct_slices, strict=True):
        if m.shape != c.shape:
            raise MrictError(f"mask slice {m.shape} and image slice {c.shape} differ", path)
    return list(binarise_mask(np.stack([m.pixels for m in raw]), path, None))


def _run_model(generator, images: list[np.ndarray], size: int, batch_size: int) -> list[np.ndarray]:
    net_in = np.stack([to_network(x, size, -1.0) for x in images])
    net_out = translate_array(generator, net_in, batch_size)
    return [from_network(y, x.shape) for x, y in zip(images, net_out, strict=True)]


def _unpaired(
    gens, images: list[np.ndarray], forward: str, size: int, batch_size: int
) -> dict[str, float]:
    backward = "ct2mr" if forward == "mr2ct" else "mr2ct"
    fake = _run_model(gens[forward], images, size, batch_size)
    rec = _run_model(gens[backward], fake, size, batch_size)
    rows = [
        {**M.cycle_metrics(x, r), **M.structure_metrics(x, f)}
        for x, f, r in zip(images, fake, rec, strict=True)
    ]
    return M.mean_metrics(rows)


def evaluate_translation(
    run_dir: str | Path,
    data: str | Path,
    *,
    batch_size: int = 8,
    device: str | None = None,
    write: bool = True,
    paired_split: str = "test",
    segmenters: Mapping[str, str | Path] | None = None,
    segmenter_split: str = "val",
) -> dict[str, Any]:
    """Score a run. With paired data (``DATA/paired_<paired_split>/{MR,CT[,mask]}``, split
    "test" or "val", or such a folder itself): MR -> CT MAE (HU, head mask), PSNR, SSIM over
    [-1024, 3000] HU and CT -> MR metrics on normalised intensities, and the lesion-level
    metrics of :mod:`mrict.translation.lesion_metrics` (key ``lesion``; tumour figures need
    ``mask/``), for the model, the identity baseline and histogram matching to the other
    modality's train histogram; plus the unpaired scores. Without pairs (a data set folder):
    only cycle and structure scores on each modality's test split.

    ``segmenters`` maps a target modality ("CT", "MR") to a trained segmentation run: its
    Dice on the data set's labelled source slices of ``segmenter_split`` (the GAN run's
    patient split; "val" by default, "test" for reporting only) translated into the target,
    against the source masks, next to the untranslated and histogram-matched slices (key
    ``segmenter_dice``). Writes RUN/eval_translation.json when ``write``."""
    run_dir, data = Path(run_dir), Path(data)
    if segmenter_split not in SEGMENTER_SPLITS:
        raise MrictError(f"unknown segmenter split {segmenter_split!r} (use val or test)")
    meta = read_run_meta(run_dir)
    gens = load_generators(run_dir, device)
    size = int(meta["image_size"])
    if not data.exists():
        raise MrictError("data folder not found", data)
    result: dict[str, Any] = {
        "run": str(run_dir),
        "data": str(data),
        "image_size": size,
        "iterations": meta.get("iterations"),
        "generators_from": meta.get("source", "final"),
        "selection": meta.get("selection"),
    }
    paired = find_paired_dir(data, paired_split) if data.is_dir() else None
    hist = meta.get("histograms") or {}
    if (paired is not None or segmenters) and ("CT" not in hist or "MR" not in hist):
        raise MrictError(
            "run has no train histograms (generators.json); retrain with this mrict", run_dir
        )
    if segmenters and paired is not None and paired == data:
        raise MrictError(
            "segmenter Dice needs the data set folder (MR/image_MR, CT/image_CT with masks), "
            "not a paired folder",
            data,
        )
    loaded = _load_segmenters(segmenters or {}, device)
    if paired is not None:
        mr, ct_hu, labels, tumour = load_paired(paired, with_masks=True)
        ct_unit = [hu_to_unit(c).astype(np.float32) for c in ct_hu]
        masks = [M.head_mask_from_ct(c) for c in ct_hu]
        outputs = {
            "mr2ct": {
                "model": _run_model(gens["mr2ct"], mr, size, batch_size),
                "identity": [identity_baseline(m[None])[0] for m in mr],
                "histogram": [histogram_baseline(m[None], np.asarray(hist["CT"]))[0] for m in mr],
            },
            "ct2mr": {
                "model": _run_model(gens["ct2mr"], ct_unit, size, batch_size),
                "identity": [c.copy() for c in ct_unit],
                "histogram": [
                    histogram_baseline(c[None], np.asarray(hist["MR"]))[0] for c in ct_unit
                ],
            },
        }
        result.update(
            paired_dir=str(paired),
            paired_split=paired_split if paired != data else None,
            n_slices=len(labels),
            window=M.HU_WINDOW,
            protocol=(
                "MR->CT: MAE in HU inside the head mask (CT > -500 HU, filled); PSNR and SSIM on "
                "[-1024, 3000] HU mapped to [0, 1], data range 1, over the head mask. CT->MR: the "
                "same on normalised intensities."
            ),
        )
        # MR -> CT outputs in HU, once for the whole-head and the lesion metrics
        outputs["mr2ct"] = {m: [unit_to_hu(p) for p in v] for m, v in outputs["mr2ct"].items()}
        for direction in ("mr2ct", "ct2mr"):
            result[direction] = {}
            for method in METHODS:
                preds = outputs[direction][method]
                if direction == "mr2ct":
                    rows = [
                        M.ct_metrics(p, t, k) for p, t, k in zip(preds, ct_hu, masks, strict=True)
                    ]
                else:
                    rows = [
                        M.unit_metrics(p, t, k) for p, t, k in zip(preds, mr, masks, strict=True)
                    ]
                result[direction][method] = M.mean_metrics(rows)
        result["lesion"] = _lesion(outputs, mr, ct_hu, tumour)
        m2c = result["mr2ct"]
        result["beats_baselines_mr2ct"] = {
            "mae_hu": all(
                m2c["model"]["mae_hu"] < m2c[b]["mae_hu"] for b in ("identity", "histogram")
            ),
            "ssim": all(m2c["model"]["ssim"] > m2c[b]["ssim"] for b in ("identity", "histogram")),
        }
        result["unpaired_not_fidelity"] = {
            "mr2ct": _unpaired(gens, mr, "mr2ct", size, batch_size),
            "ct2mr": _unpaired(gens, ct_unit, "ct2mr", size, batch_size),
        }
    else:
        result["unpaired_not_fidelity"] = _unpaired_dataset(gens, data, meta, size, batch_size)
    if segmenters:
        result["segmenter_dice"] = _segmenter_dice(
            gens, data, meta, size, batch_size, loaded, segmenter_split
        )
    if write:
        atomic_write_text(run_dir / "eval_translation.json", json.dumps(result, indent=1))
    return result


def _unpaired_dataset(gens, data: Path, meta: dict, size: int, batch_size: int) -> dict[str, Any]:
    from mrict.data.datasets import load_modality
    from mrict.data.splits import split_patients

    split_seed = int(meta.get("config", {}).get("split_seed", 0))
    out: dict[str, Any] = {}
    for modality, direction in (("MR", "mr2ct"), ("CT", "ct2mr")):
        full = load_modality(data, modality, size=size, progress=False)
        test = full.select(split_patients(full.patients(), seed=split_seed)["test"])
        chosen = test if len(test) else full
        out[direction] = _unpaired(gens, list(chosen.images), direction, size, batch_size)
        out[direction]["split"] = "test" if len(test) else "all"
    return out


def _lesion(
    outputs: dict[str, dict[str, list[np.ndarray]]],
    mr: list[np.ndarray],
    ct_hu: list[np.ndarray],
    tumour: list[np.ndarray] | None,
) -> dict[str, Any]:
    """Lesion-level metrics per direction and method (regions from the GT CT and masks);
    ``outputs["mr2ct"]`` in HU, ``outputs["ct2mr"]`` in [-1, 1]."""
    masks: list[np.ndarray | None] = list(tumour) if tumour is not None else [None] * len(ct_hu)
    regions = [LM.lesion_regions(c, t) for c, t in zip(ct_hu, masks, strict=True)]
    out: dict[str, Any] = {
        "protocol": LM.PROTOCOL,
        "tumour_masks": tumour is not None,
        "aggregation": "pixels pooled over slices",
    }
    for direction in ("mr2ct", "ct2mr"):
        out[direction] = {}
        for method in METHODS:
            preds = outputs[direction][method]
            if direction == "mr2ct":
                out[direction][method] = LM.lesion_metrics(preds, ct_hu, regions, "CT")
            else:
                out[direction][method] = LM.lesion_metrics(preds, mr, regions, "MR")
    return out


def segmenter_label(target: str) -> str:
    """The display label of the segmenter score for a target modality ("CT" or "MR")."""
    source = "MR" if target == "CT" else "CT"
    return f"Dice of a real-{target} segmenter on translated {source} slices (source masks)"


def _load_segmenters(
    segmenters: Mapping[str, str | Path], device: str | None
) -> dict[str, tuple[str | Path, Any]]:
    """Target modality -> (run folder, loaded :class:`Segmenter`), modalities checked."""
    from mrict.segmentation.predict import load_segmenter

    out: dict[str, tuple[str | Path, Any]] = {}
    for target_raw, run in segmenters.items():
        target = target_raw.upper()
        if target not in ("CT", "MR"):
            raise MrictError(f"segmenter target must be CT or MR, got {target_raw!r}")
        seg = load_segmenter(run, device)
        if seg.modality.upper() != target:
            raise MrictError(
                f"this segmenter was trained on {seg.modality}, not {target}", Path(run)
            )
        out[target] = (run, seg)
    return out


def _segmenter_dice(
    gens,
    data: Path,
    meta: dict,
    size: int,
    batch_size: int,
    segmenters: Mapping[str, tuple[str | Path, Any]],
    split: str,
) -> dict[str, Any]:
    """Dice of each target segmenter on the labelled source slices of ``split``: translated
    (model), untranslated (identity) and histogram-matched to the target train histogram."""
    from mrict.data.datasets import load_modality
    from mrict.data.splits import split_patients

    split_seed = int(meta.get("config", {}).get("split_seed", 0))
    hist = meta["histograms"]
    out: dict[str, Any] = {
        "split": split,
        "protocol": LM.SEGMENTER_PROTOCOL
        + f" Source slices: the labelled {split}-split patients of the data set (the GAN run's "
        "patient split); "
        + ("val is for choosing models." if split == "val" else "test is for reporting only."),
    }
    for target, (run, seg) in segmenters.items():
        source, direction = ("MR", "mr2ct") if target == "CT" else ("CT", "ct2mr")
        full = load_modality(data, source, size=size, progress=False)
        chosen = full.labelled().select(split_patients(full.patients(), seed=split_seed)[split])
        if len(chosen) == 0:
            raise MrictError(f"the {split} split holds no labelled {source} slices", data)
        inputs = {
            "model": translate_array(gens[direction], chosen.images, batch_size),
            "identity": identity_baseline(chosen.images),
            "histogram": histogram_baseline(chosen.images, np.asarray(hist[target])),
        }
        row: dict[str, Any] = {
            "label": segmenter_label(target),
            "segmenter": str(run),
            "target": target,
            "source": source,
        }
        for method in METHODS:
            row[method] = LM.segmenter_dice_on_translated(
                seg, inputs[method], chosen.masks, chosen.patient_ids, batch_size
            )
        out[direction] = row
    return out
