"""A segmenter run folder: refusing the wrong one before any work, the digest that ties a
checkpoint to its data, and the weights a fine-tuning run starts from."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from mrict.config import config_to_dict
from mrict.data.datasets import SliceSet
from mrict.errors import MrictError
from mrict.runtime.checkpoint import load_checkpoint
from mrict.segmentation.config import SegConfig
from mrict.segmentation.inputs import describe_inputs

MODEL = "model"
CHECKPOINT = "checkpoint"


def data_fingerprint(data: SliceSet, inputs: np.ndarray | None = None) -> str:
    """Short digest of the training slices (``inputs``, default the images; masks;
    patients): a resumed run must see exactly the data the interrupted one saw."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.ascontiguousarray(data.images if inputs is None else inputs).tobytes())
    digest.update(np.ascontiguousarray(data.masks).tobytes())
    digest.update("\0".join(data.patient_ids).encode())
    return digest.hexdigest()


def check_run_folder(out: str | Path, resume: bool) -> bool:
    """Validate ``out`` for a new (``resume=False``) or resumed run before any work.

    Refuses a finished run (it holds ``model.json``), a folder holding a checkpoint
    without ``resume``, and ``resume`` on a folder that is not a run. Returns True when
    there is a checkpoint to resume from (``resume`` on a run stopped before its first
    checkpoint starts again from the beginning and returns False).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MrictError("output exists and is not a folder", out)
    if (out / f"{MODEL}.json").exists():
        raise MrictError(
            "run folder already holds a model (finished run); choose another --out", out
        )
    has_ckpt = (out / f"{CHECKPOINT}.json").is_file()
    if not resume:
        if has_ckpt:
            raise MrictError(
                "run folder holds an interrupted run's checkpoint; pass --resume to continue "
                "it or choose another --out",
                out,
            )
        return False
    if not has_ckpt and not (out / "config.yaml").is_file():
        raise MrictError("nothing to resume: no checkpoint in this run folder", out)
    return has_ckpt


def load_init(
    init: Path, config: SegConfig, modality: str, in_channels: int
) -> tuple[dict[str, torch.Tensor], str]:
    """Weights of the trained segmenter in ``init`` (same architecture and inputs) and a
    digest of its weights file."""
    if not (init / f"{MODEL}.json").is_file():
        raise MrictError("init: no trained segmenter in this folder (model.json)", init)
    state, meta = load_checkpoint(init / MODEL)
    saved = meta.get("config", {})
    mine = config_to_dict(config)
    from mrict.segmentation.model import ARCH_KEYS

    differ = [k for k in ARCH_KEYS if k in saved and saved[k] != mine[k]]
    if int(meta.get("in_channels", 1)) != in_channels:
        differ.append("in_channels")
    if meta.get("input", describe_inputs(config, modality)) != describe_inputs(config, modality):
        differ.append("input windows")
    if differ:
        raise MrictError(f"init segmenter differs in {', '.join(differ)}", init)
    if "unet" not in state:
        raise MrictError("init checkpoint holds no U-Net weights", init)
    digest = hashlib.blake2b((init / f"{MODEL}.safetensors").read_bytes(), digest_size=16)
    return state["unet"], digest.hexdigest()
