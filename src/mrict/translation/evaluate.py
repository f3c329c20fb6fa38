"""Evaluate a trained run: fidelity on paired test data (with the trivial baselines in the
same run), or consistency/structure on unpaired data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mrict.data.datasets import normalise
from mrict.data.geometry import from_network, to_network
from mrict.data.intensity import hu_to_unit, unit_to_hu
from mrict.data.io import is_image_file, read_slices
from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_write_text
from mrict.translation import metrics as M
from mrict.translation.baselines import histogram_baseline, identity_baseline
from mrict.translation.translate import load_generators, read_run_meta, translate_array

METHODS = ("model", "identity", "histogram")


def find_paired_dir(data: Path) -> Path | None:
    """``data`` itself or ``data/paired_test`` if it holds MR/ and CT/ folders of images."""
    for cand in (data / "paired_test", data):
        if (
            (cand / "MR").is_dir()
            and (cand / "CT").is_dir()
            and not (cand / "MR" / "image_MR").is_dir()
        ):
            return cand
    return None


def load_paired(paired_dir: Path) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """MR slices normalised to [-1, 1] and CT slices in HU, (H, W) each, matched by file name."""
    mr_files = {p.name: p for p in sorted((paired_dir / "MR").iterdir()) if is_image_file(p)}
    ct_files = {p.name: p for p in sorted((paired_dir / "CT").iterdir()) if is_image_file(p)}
    names = sorted(set(mr_files) & set(ct_files))
    if not names:
        raise MrictError(
            "no file names common to MR/ and CT/ (paired data needs identical names)", paired_dir
        )
    mr_out, ct_out, labels = [], [], []
    for name in names:
        mr_sl = read_slices(mr_files[name], "MR")
        ct_sl = read_slices(ct_files[name], "CT")
        if len(mr_sl) != len(ct_sl):
            raise MrictError(f"MR has {len(mr_sl)} slices, CT has {len(ct_sl)}", ct_files[name])
        for m, c in zip(mr_sl, ct_sl, strict=True):
            if m.shape != c.shape:
                raise MrictError(
                    f"MR slice {m.shape} and CT slice {c.shape} differ in size", ct_files[name]
                )
            mr_out.append(normalise(m.pixels, "MR")[0])
            ct_out.append(c.pixels.astype(np.float32))
            labels.append(f"{name}[{m.index}]")
    return mr_out, ct_out, labels


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
) -> dict[str, Any]:
    """Score a run. With paired data (``DATA/paired_test/{MR,CT}`` or such a folder itself):
    MR -> CT MAE (HU, head mask), PSNR, SSIM over [-1024, 3000] HU and CT -> MR metrics on
    normalised intensities, for the model, the identity baseline and histogram matching to
    the other modality's train histogram; plus the unpaired scores. Without pairs (a data
    set folder): only cycle and structure scores on each modality's test split.
    Writes RUN/eval_translation.json when ``write``."""
    run_dir, data = Path(run_dir), Path(data)
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
    }
    paired = find_paired_dir(data) if data.is_dir() else None
    if paired is not None:
        mr, ct_hu, labels = load_paired(paired)
        hist = meta.get("histograms") or {}
        if "CT" not in hist or "MR" not in hist:
            raise MrictError(
                "run has no train histograms (generators.json); retrain with this mrict", run_dir
            )
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
            n_slices=len(labels),
            window=M.HU_WINDOW,
            protocol=(
                "MR->CT: MAE in HU inside the head mask (CT > -500 HU, filled); PSNR and SSIM on "
                "[-1024, 3000] HU mapped to [0, 1], data range 1, over the head mask. CT->MR: the "
                "same on normalised intensities."
            ),
        )
        for direction in ("mr2ct", "ct2mr"):
            result[direction] = {}
            for method in METHODS:
                preds = outputs[direction][method]
                if direction == "mr2ct":
                    rows = [
                        M.ct_metrics(unit_to_hu(p), t, k)
                        for p, t, k in zip(preds, ct_hu, masks, strict=True)
                    ]
                else:
                    rows = [
                        M.unit_metrics(p, t, k) for p, t, k in zip(preds, mr, masks, strict=True)
                    ]
                result[direction][method] = M.mean_metrics(rows)
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
