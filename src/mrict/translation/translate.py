"""Inference: load trained generators and translate arrays, files or whole data sets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from mrict.data.datasets import normalise
from mrict.data.geometry import from_network, to_network
from mrict.data.intensity import DEFAULT_CT_MAP, remap_ct, unit_to_hu
from mrict.data.io import is_image_file, read_slices, write_like
from mrict.data.layout import find_modality_dirs
from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_write_with
from mrict.runtime.checkpoint import load_checkpoint, load_module_state
from mrict.runtime.device import autocast_context, pick_device, resolve_precision
from mrict.runtime.outputs import prepare_output_dir
from mrict.runtime.progress import progress_bar
from mrict.translation.networks import ResnetGenerator

DIRECTIONS = {"mr2ct": ("MR", "CT"), "ct2mr": ("CT", "MR")}
GENERATORS = "generators"
#: train-split intensity quantiles of each modality (for the histogram baseline)
HISTOGRAMS = "histograms.json"
#: full-scale value of translated MRI written to 16-bit files and DICOM (12-bit range)
MR_OUTPUT_SCALE = 4095.0


def check_direction(direction: str) -> tuple[str, str]:
    """``"mr2ct"`` -> ("MR", "CT"), ``"ct2mr"`` -> ("CT", "MR"); MrictError otherwise."""
    key = direction.lower().replace("-", "").replace("_", "")
    if key not in DIRECTIONS:
        raise MrictError(f"unknown direction {direction!r} (use mr2ct or ct2mr)")
    return DIRECTIONS[key]


def _load_run(run_dir: Path) -> tuple[dict, dict]:
    """(generator states {"mr2ct", "ct2mr"}, meta) of a run: its final generators, or, for
    a run still in progress or interrupted, the generators of its latest checkpoint."""
    if not run_dir.is_dir():
        raise MrictError("run folder not found", run_dir)
    if (run_dir / f"{GENERATORS}.json").is_file():
        return load_checkpoint(run_dir / GENERATORS)
    if (run_dir / "checkpoint.json").is_file():
        state, meta = load_checkpoint(run_dir / "checkpoint")
        cfg = meta.get("config", {})
        gens = state.get("generators", {})
        split = {
            key: {k[len(key) + 1 :]: v for k, v in gens.items() if k.startswith(key + ".")}
            for key in ("mr2ct", "ct2mr")
        }
        meta = {
            "arch": {
                "in_ch": 1,
                "out_ch": 1,
                "ngf": cfg.get("ngf"),
                "n_blocks": cfg.get("n_blocks"),
                "upsample": cfg.get("upsample", "transpose"),
            },
            "image_size": cfg.get("image_size"),
            "config": cfg,
            "iterations": meta.get("iteration"),
            "source": "checkpoint",
        }
        return split, meta
    raise MrictError("no trained generators in this run folder (generators.json)", run_dir)


def read_run_meta(run_dir: str | Path) -> dict:
    """Metadata of a run's generators (architecture, image size, config, iterations,
    train histograms); ``source`` is "checkpoint" when read from an unfinished run."""
    run_dir = Path(run_dir)
    meta = dict(_load_run(run_dir)[1])
    hist_file = run_dir / HISTOGRAMS
    if "histograms" not in meta and hist_file.is_file():
        meta["histograms"] = json.loads(hist_file.read_text("utf-8"))
    return meta


class CtMapAdapter(torch.nn.Module):
    """A generator trained with another CT network map (``ct_map``), seen through the
    default map: CT inputs are remapped before it, CT outputs after it, so every caller
    passes and receives CT in :data:`~mrict.data.intensity.DEFAULT_CT_MAP` units."""

    def __init__(self, generator: ResnetGenerator, key: str, ct_map: str) -> None:
        super().__init__()
        self.generator, self.key, self.ct_map = generator, key, ct_map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.key == "ct2mr":
            return self.generator(remap_ct(x, DEFAULT_CT_MAP, self.ct_map))
        return remap_ct(self.generator(x), self.ct_map, DEFAULT_CT_MAP)


def load_generators(
    run_dir: str | Path, device: str | torch.device | None = None
) -> dict[str, torch.nn.Module]:
    """``{"mr2ct": G, "ct2mr": G}`` in eval mode from RUN/generators.{safetensors,json}
    (or the latest RUN/checkpoint of an unfinished run).

    Each generator carries ``image_size`` (the training size) as an attribute, and takes
    and returns CT in the default network map whatever map it was trained with (runs
    from before the map existed used ``"linear"``; runs from before ``upsample`` existed
    used transposed convolutions).
    """
    run_dir = Path(run_dir)
    state, meta = _load_run(run_dir)
    arch = meta.get("arch", {})
    dev = pick_device(str(device)) if device is not None else torch.device("cpu")
    ct_map = str(meta.get("config", {}).get("ct_map", "linear"))
    out: dict[str, torch.nn.Module] = {}
    for key in ("mr2ct", "ct2mr"):
        if not state.get(key):
            raise MrictError(f"run holds no {key} generator", run_dir)
        g = ResnetGenerator(
            int(arch.get("in_ch", 1)),
            int(arch.get("out_ch", 1)),
            int(arch["ngf"]),
            int(arch["n_blocks"]),
            upsample=arch.get("upsample", "transpose"),
        )
        load_module_state(g, state[key], key)
        model: torch.nn.Module = g if ct_map == DEFAULT_CT_MAP else CtMapAdapter(g, key, ct_map)
        model.image_size = int(meta["image_size"])  # type: ignore[assignment]
        out[key] = model.to(dev).eval()
    return out


@torch.no_grad()
def translate_array(
    generator: torch.nn.Module, images: np.ndarray, batch_size: int = 8, precision: str = "fp32"
) -> np.ndarray:
    """(N, H, W) float32 in [-1, 1] -> (N, H, W) in [-1, 1] (H, W divisible by 4).

    Runs without autograd; ``precision`` "bf16"/"fp16"/"auto" runs under autocast (faster
    where supported, outputs differ from fp32 by bf16 rounding), "fp32" is exact.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"expected (N, H, W) images, got shape {images.shape}")
    if batch_size < 1:
        raise MrictError(f"batch size must be >= 1, got {batch_size}")
    device = next(generator.parameters()).device
    precision = resolve_precision(device, precision)
    out = np.empty_like(images)
    with torch.inference_mode(), autocast_context(device, precision):
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i : i + batch_size])[:, None].to(device)
            out[i : i + batch_size] = generator(x)[:, 0].float().clamp(-1, 1).cpu().numpy()
    return out


def unit_to_native(x: np.ndarray, modality: str, bits: int | None) -> np.ndarray:
    """Network output in [-1, 1] -> native units: HU for CT; for MR (no absolute scale)
    [0, 255] for 8-bit raster files, else [0, 4095]."""
    if modality == "CT":
        return unit_to_hu(x).astype(np.float32)
    scale = 255.0 if bits is not None and bits <= 8 else MR_OUTPUT_SCALE
    return ((np.clip(x, -1, 1) + 1.0) * 0.5 * scale).astype(np.float32)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_image_file(p))


def translate_file(
    generator: torch.nn.Module,
    source: Path,
    out_dir: Path,
    src_mod: str,
    tgt_mod: str,
    size: int,
    batch_size: int = 8,
    anonymize: bool = False,
    precision: str = "fp32",
) -> list[Path]:
    """Translate every slice of one image file (or DICOM series folder) and write the
    result in the same format under ``out_dir`` with the source name (DICOM de-identified
    when ``anonymize``)."""
    slices = read_slices(source, src_mod)
    units = []
    for s in slices:
        unit, _ = normalise(s.pixels, src_mod)
        units.append(to_network(unit, size, -1.0))
    fake = translate_array(generator, np.stack(units), batch_size, precision)
    arrays = []
    for s, f in zip(slices, fake, strict=True):
        back = from_network(f, s.shape)
        arrays.append(
            unit_to_native(back, tgt_mod, s.meta.get("bits") if s.fmt != "dicom" else None)
        )
    return write_like(
        slices,
        arrays,
        out_dir,
        modality=tgt_mod,
        description=f"mrict synthetic {tgt_mod} from {src_mod}",
        anonymize=anonymize,
    )


def translate_path(
    run_dir: str | Path,
    input_path: str | Path,
    output_dir: str | Path,
    direction: str,
    *,
    batch_size: int = 8,
    device: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    anonymize: bool = False,
    precision: str = "fp32",
) -> list[Path]:
    """Translate a file, a folder of images, or a data set (``DATA/MR/image_MR`` ...).

    The output folder must not be, contain or lie inside the input, and must be empty
    unless ``overwrite``. ``anonymize`` de-identifies DICOM outputs (basic profile).

    Outputs keep the input format and names. For a data set, the translated images go to
    ``OUTPUT/<TGT>/image_<TGT>/`` and the source masks are copied to
    ``OUTPUT/<TGT>/mask_<TGT>/`` so the result is ready for segmentation. Returns the
    written image paths.
    """
    src_mod, tgt_mod = check_direction(direction)
    gens = load_generators(run_dir, device)
    key = "mr2ct" if src_mod == "MR" else "ct2mr"
    generator = gens[key]
    size = int(generator.image_size)
    inp, out = Path(input_path), Path(output_dir)
    if not inp.exists():
        raise MrictError("input not found", inp)
    prepare_output_dir(out, inputs=[inp], overwrite=overwrite)
    jobs: list[tuple[Path, Path]] = []  # (source file, output folder)
    mask_copies: list[tuple[Path, Path]] = []
    dataset = find_modality_dirs(inp, src_mod) if inp.is_dir() else None
    if dataset is not None:
        image_dir, mask_dir = dataset
        img_out = out / tgt_mod / f"image_{tgt_mod}"
        for f in _image_files(image_dir):
            jobs.append((f, img_out / f.parent.relative_to(image_dir)))
        if mask_dir is not None:
            msk_out = out / tgt_mod / f"mask_{tgt_mod}"
            for f in _image_files(mask_dir):
                mask_copies.append((f, msk_out / f.relative_to(mask_dir)))
    elif inp.is_dir() and find_modality_dirs(inp, tgt_mod) is not None:
        raise MrictError(f"this data set has no {src_mod} images to translate", inp)
    elif inp.is_dir():
        files = _image_files(inp)
        if not files:
            raise MrictError("folder holds no image files", inp)
        jobs = [(f, out / f.parent.relative_to(inp)) for f in files]
    else:
        jobs = [(inp, out)]
    if not jobs:
        raise MrictError(f"no {src_mod} images to translate", inp)
    sources = {f.resolve() for f, _ in jobs} | {f.resolve() for f, _ in mask_copies}
    targets = [d / f.name for f, d in jobs] + [d for _, d in mask_copies]
    clash = next((t for t in targets if t.resolve() in sources), None)
    if clash is not None:
        raise MrictError("refusing to overwrite an input file; choose another output folder", clash)
    written: list[Path] = []
    with progress_bar(progress, "translating") as bar:
        task = bar.add_task("translate", total=len(jobs))
        for source, target_dir in jobs:
            written += translate_file(
                generator,
                source,
                target_dir,
                src_mod,
                tgt_mod,
                size,
                batch_size,
                anonymize,
                precision,
            )
            bar.advance(task)
    for src, dst in mask_copies:
        atomic_write_with(dst, lambda tmp, src=src: shutil.copyfile(src, tmp))
    return written
