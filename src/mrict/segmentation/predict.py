"""Inference: load a trained segmenter and predict binary masks for arrays, files or folders."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrict.data.datasets import normalise
from mrict.data.geometry import from_network, resize_batch, to_network
from mrict.data.io import is_image_file, read_slices, write_like
from mrict.data.raster_io import write_png
from mrict.errors import MrictError
from mrict.runtime.checkpoint import load_checkpoint, load_module_state
from mrict.runtime.device import pick_device, resolve_precision
from mrict.segmentation.config import SegConfig
from mrict.segmentation.model import build_unet
from mrict.segmentation.trainer import MODEL, predict_logits


class Segmenter:
    """A trained U-Net with its config and metadata (modality, seed, selection)."""

    def __init__(self, model: torch.nn.Module, config: SegConfig, meta: dict[str, Any]) -> None:
        self.model = model
        self.config = config
        self.meta = meta

    @property
    def modality(self) -> str:
        return str(self.meta.get("modality", "MR"))


def load_segmenter(run_dir: str | Path, device: str | None = None) -> Segmenter:
    """Load ``RUN/model.{safetensors,json}`` written by :func:`train_segmenter`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MrictError("segmentation run folder not found", run_dir)
    if not (run_dir / f"{MODEL}.json").is_file():
        raise MrictError("no trained segmenter in this folder (model.json)", run_dir)
    state, meta = load_checkpoint(run_dir / MODEL)
    known = {f.name for f in fields(SegConfig)}
    raw = {k: v for k, v in meta.get("config", {}).items() if k in known}
    if "channels" in raw:
        raw["channels"] = tuple(raw["channels"])
    config = SegConfig(**raw)
    if device is not None:
        config.device = device
    model = build_unet(config)
    if "unet" not in state:
        raise MrictError("checkpoint holds no U-Net weights", run_dir / f"{MODEL}.safetensors")
    load_module_state(model, state["unet"], "unet")
    model.to(pick_device(config.device)).eval()
    return Segmenter(model, config, meta)


def predict_masks(
    segmenter: Segmenter | str | Path, images: np.ndarray, batch_size: int = 16
) -> np.ndarray:
    """(N, H, W) images in [-1, 1] -> (N, H, W) uint8 masks in {0, 1}.

    Images of another size are resized to the model's size and the masks back (nearest).
    """
    seg = segmenter if isinstance(segmenter, Segmenter) else load_segmenter(segmenter)
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"expected (N, H, W) images, got shape {images.shape}")
    if len(images) == 0:
        return np.zeros(images.shape, np.uint8)
    size = seg.config.image_size
    h, w = images.shape[1:]
    if h != w:
        raise ValueError(f"expected square images, got {h}x{w}")
    net_in = resize_batch(images, size)
    device = next(seg.model.parameters()).device
    precision = resolve_precision(device, seg.config.precision)
    logits = predict_logits(seg.model, net_in, device, precision, batch_size)
    t = seg.config.threshold
    masks = (logits > math.log(t / (1.0 - t))).astype(np.float32)
    return resize_batch(masks, h, nearest=True).astype(np.uint8)


def _inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if is_image_file(p))
        if files:
            return files
        raise MrictError("folder holds no image files", path)
    raise MrictError("input not found", path)


def segment_path(
    run_dir: str | Path, input_path: str | Path, output_dir: str | Path, batch_size: int = 16
) -> list[Path]:
    """Segment a file, DICOM series folder or folder of images; write masks to ``output_dir``.

    Masks keep the input's format and file names: DICOM (one derived file per slice, values
    0/1), NIfTI (one volume per input volume, same affine, values 0/1), PNG/TIFF/JPEG as
    8-bit PNG with values 0/255 (JPEG/TIFF inputs get a ``.png`` name: masks must be lossless).
    Returns the written paths. Inputs are never overwritten.
    """
    seg = load_segmenter(run_dir)
    inp, out = Path(input_path), Path(output_dir)
    files = _inputs(inp)
    base = inp if inp.is_dir() else inp.parent
    if out.resolve() == base.resolve():
        raise MrictError("output folder must differ from the input folder", out)
    if out.exists() and not out.is_dir():
        raise MrictError("output exists and is not a folder", out)
    written: list[Path] = []
    modality = seg.modality
    size = seg.config.image_size
    for f in files:
        slices = read_slices(f, modality)
        if not slices:
            raise MrictError("file holds no slices", f)
        net = np.stack([to_network(normalise(s.pixels, modality)[0], size, -1.0) for s in slices])
        masks = predict_masks(seg, net, batch_size)
        native = [
            from_network(m.astype(np.float32), s.shape, nearest=True).astype(np.uint8)
            for s, m in zip(slices, masks, strict=True)
        ]
        target = out / f.parent.relative_to(base) if inp.is_dir() else out
        if target.resolve() / f.name == f.resolve():
            raise MrictError("refusing to overwrite an input file", f)
        if slices[0].fmt in ("dicom", "nifti"):
            written += write_like(
                slices,
                [m.astype(np.float32) for m in native],
                target,
                modality="MR",
                description="mrict tumour mask",
            )
        else:
            for s, m in zip(slices, native, strict=True):
                stem = f.name.rsplit(".", 1)[0]
                name = f"{stem}.png" if len(slices) == 1 else f"{stem}_{s.index:03d}.png"
                written.append(write_png(target / name, m * 255, bits=8))
    return written
