"""Inference: load a trained segmenter and predict binary masks for arrays, files or folders."""

from __future__ import annotations

import hashlib
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrict.config import coerce_options
from mrict.data.datasets import normalise
from mrict.data.geometry import from_network, resize_batch, to_network
from mrict.data.io import ImageSlice, is_image_file, read_slices, write_like
from mrict.data.raster_io import write_png
from mrict.errors import MrictError
from mrict.runtime.checkpoint import load_checkpoint, load_module_state
from mrict.runtime.device import pick_device, resolve_precision
from mrict.segmentation.config import SegConfig
from mrict.segmentation.inputs import input_channels, prepare_inputs
from mrict.segmentation.model import ARCH_KEYS, WEIGHT_KEYS, build_unet
from mrict.segmentation.run_folder import MODEL
from mrict.segmentation.trainer import predict_logits


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
    """Load ``RUN/model.{safetensors,json}`` written by :func:`train_segmenter`.

    The config in model.json is checked against SegConfig's declared types and must hold
    every architecture setting (:data:`~mrict.segmentation.model.ARCH_KEYS`), which must
    fit the weights; anything else is a one-line :class:`MrictError` naming the setting
    and model.json."""
    run_dir = Path(run_dir)
    sidecar = run_dir / f"{MODEL}.json"
    if not run_dir.is_dir():
        raise MrictError("segmentation run folder not found", run_dir)
    if not sidecar.is_file():
        raise MrictError("no trained segmenter in this folder (model.json)", run_dir)
    state, meta = load_checkpoint(run_dir / MODEL)
    saved = meta.get("config")
    if not isinstance(saved, dict):
        raise MrictError("no segmenter config in this model file", sidecar)
    missing = [k for k in ARCH_KEYS if k not in saved]
    if missing:
        raise MrictError(f"config lacks the architecture setting(s) {', '.join(missing)}", sidecar)
    known = {f.name for f in fields(SegConfig)}
    raw = {k: v for k, v in saved.items() if k in known}
    # models written before input windows existed saw CT in the network representation
    raw.setdefault("ct_window", None)
    if raw.get("ct_extra_windows") is None:
        raw["ct_extra_windows"] = ()
    config = SegConfig(**coerce_options(SegConfig, raw, sidecar))
    if device is not None:
        config.device = device
    modality = str(meta.get("modality", "MR"))
    in_channels = int(meta.get("in_channels", 1))
    if in_channels != input_channels(config, modality):
        raise MrictError(
            f"model.json: {in_channels} input channel(s) but the recorded CT windows give "
            f"{input_channels(config, modality)}",
            sidecar,
        )
    try:
        model = build_unet(config, in_channels)
    except MrictError as exc:
        raise MrictError(exc.message, sidecar) from exc
    if "unet" not in state:
        raise MrictError("checkpoint holds no U-Net weights", run_dir / f"{MODEL}.safetensors")
    try:
        load_module_state(model, state["unet"], "unet")
    except MrictError as exc:
        arch = ", ".join(f"{k}={saved[k]!r}" for k in WEIGHT_KEYS)
        raise MrictError(
            f"architecture settings {arch}, in_channels={in_channels} do not fit the weights "
            f"in {MODEL}.safetensors ({exc.message})",
            sidecar,
        ) from exc
    model.to(pick_device(config.device)).eval()
    return Segmenter(model, config, meta)


def _logits(seg: Segmenter, images: np.ndarray, batch_size: int) -> np.ndarray:
    """(N, S, S) network-representation images -> (N, size, size) logits at the model's
    size, through the model's input windows (:func:`prepare_inputs`, the same transform
    as in training; the windows follow the modality the model was trained on)."""
    size = seg.config.image_size
    h, w = images.shape[1:]
    if h != w:
        raise ValueError(f"expected square images, got {h}x{w}")
    net_in = prepare_inputs(resize_batch(images, size), seg.modality, seg.config)
    device = next(seg.model.parameters()).device
    precision = resolve_precision(device, seg.config.precision)
    return predict_logits(seg.model, net_in, device, precision, batch_size)


def _images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"expected (N, H, W) images, got shape {images.shape}")
    return images


def predict_masks(
    segmenter: Segmenter | str | Path, images: np.ndarray, batch_size: int = 16
) -> np.ndarray:
    """(N, H, W) images in [-1, 1] (the network representation of the model's modality)
    -> (N, H, W) uint8 masks in {0, 1}.

    Images of another size are resized to the model's size and the masks back (nearest).
    """
    seg = segmenter if isinstance(segmenter, Segmenter) else load_segmenter(segmenter)
    images = _images(images)
    if len(images) == 0:
        return np.zeros(images.shape, np.uint8)
    logits = _logits(seg, images, batch_size)
    t = seg.config.threshold
    masks = (logits > math.log(t / (1.0 - t))).astype(np.float32)
    return resize_batch(masks, images.shape[1], nearest=True).astype(np.uint8)


def predict_probabilities(
    segmenter: Segmenter | str | Path, images: np.ndarray, batch_size: int = 16
) -> np.ndarray:
    """(N, S, S) images in [-1, 1] -> (N, size, size) float32 tumour probabilities in
    [0, 1] at the model's size (``size = config.image_size``)."""
    seg = segmenter if isinstance(segmenter, Segmenter) else load_segmenter(segmenter)
    images = _images(images)
    size = seg.config.image_size
    if len(images) == 0:
        return np.zeros((0, size, size), np.float32)
    logits = _logits(seg, images, batch_size)
    return (1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))).astype(np.float32)


def _inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if is_image_file(p))
        if files:
            return files
        raise MrictError("folder holds no image files", path)
    raise MrictError("input not found", path)


def model_digest(run_dir: str | Path) -> str:
    """First 16 hex digits of the SHA-256 of ``RUN/model.safetensors``: names the exact model."""
    h = hashlib.sha256()
    with (Path(run_dir) / f"{MODEL}.safetensors").open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def segment_path(
    run_dir: str | Path,
    input_path: str | Path,
    output_dir: str | Path,
    batch_size: int = 16,
    *,
    seg_all_frames: bool = False,
) -> list[Path]:
    """Segment a file, DICOM series folder or folder of images; write masks to ``output_dir``.

    DICOM inputs get one DICOM Segmentation object per source series (or per multi-frame
    file), named ``<first file's stem>_seg.dcm`` in the output folder of that file: BINARY,
    one segment "tumour", referencing every source instance, geometry from the source (see
    :mod:`mrict.data.dicom_seg`). Frames without tumour pixels are omitted unless
    ``seg_all_frames``; a series without any keeps all its frames. NIfTI: one volume per
    input volume, same affine, values 0/1. PNG/TIFF/JPEG: 8-bit PNG with values 0/255
    (JPEG/TIFF inputs get a ``.png`` name: masks must be lossless). Masks are predicted at
    the network size and resized back to each source slice (nearest). Returns the written
    paths. Inputs are never overwritten.
    """
    from mrict.data.dicom_seg import seg_file_name, series_key, write_seg

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
    # DICOM slices wait for the rest of their series: one SEG per series
    series: dict[tuple[str, ...], tuple[Path, list[ImageSlice], list[np.ndarray]]] = {}
    inputs = {f.resolve() for f in files}
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
        if slices[0].fmt == "dicom":
            for s, m in zip(slices, native, strict=True):
                entry = series.setdefault(series_key(s), (target, [], []))
                entry[1].append(s)
                entry[2].append(m)
        elif slices[0].fmt == "nifti":
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
    digest = model_digest(run_dir) if series else ""
    params = {"threshold": f"{seg.config.threshold:g}", "image_size": str(size)}
    for target, slices, masks in series.values():
        path = target / seg_file_name(slices)
        if path.resolve() in inputs:
            raise MrictError("refusing to overwrite an input file", path)
        order = sorted(range(len(slices)), key=lambda i: (str(slices[i].source), slices[i].index))
        written.append(
            write_seg(
                path,
                [slices[i] for i in order],
                [masks[i] for i in order],
                model_id=digest,
                parameters=params,
                omit_empty_frames=not seg_all_frames,
            )
        )
    return written
