"""Shared fixtures: small data sets in every supported format, built in a temp folder;
tiny simulated data sets shared by the whole session; tiny network settings."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mrict.data.io import write_dicom, write_nifti
from mrict.data.raster_io import native_to_stored, write_png


@pytest.fixture(autouse=True)
def _isolated_slice_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Give every test its own prepared-slice cache folder (never the user's ~/.cache)."""
    monkeypatch.setenv("MRICT_CACHE_DIR", str(tmp_path_factory.mktemp("slice-cache")))


@pytest.fixture(autouse=True)
def _fixed_cpu_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pin the thread count that ``mrict.cli.run`` would choose from the CPU load, so that
    two runs compared inside one test use the same count whatever else the machine runs
    (tests of the thread policy remove the variable themselves)."""
    import torch

    monkeypatch.setenv("MRICT_THREADS", str(torch.get_num_threads()))


def brainlike(rng: np.random.Generator, size: int, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """A head-like slice in native units (HU for CT) and its tumour mask (0/1)."""
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    r = np.hypot(yy / 0.42, xx / 0.36)
    cy, cx = rng.uniform(-0.12, 0.12, 2)
    tumour = np.hypot(yy - cy, xx - cx) < rng.uniform(0.05, 0.1)
    if modality == "CT":
        img = np.where(r < 1.0, 1700.0, -1000.0)
        img = np.where(r < 0.88, 35.0, img)
        img = np.where(tumour & (r < 0.88), 20.0, img)
        img = img + rng.normal(0, 5, img.shape)
    else:
        img = np.where(r < 1.0, 300.0, 0.0)
        img = np.where(r < 0.88, 600.0, img)
        img = np.where(tumour & (r < 0.88), 900.0, img)
        img = np.clip(img + rng.normal(0, 10, img.shape), 0, None)
    return img, (tumour & (r < 0.88)).astype(np.uint8)


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_dataset(fmt="dicom"|"nifti"|"png", patients=3, slices=2, size=32,
    modalities=("MR", "CT"), seed=0)`` -> root folder in the JUH layout with masks."""

    def make(
        fmt: str = "dicom",
        patients: int = 3,
        slices: int = 2,
        size: int = 32,
        modalities: tuple[str, ...] = ("MR", "CT"),
        seed: int = 0,
        root: Path | None = None,
    ) -> Path:
        rng = np.random.default_rng(seed)
        root = root or tmp_path / f"data_{fmt}"
        for m in modalities:
            img_dir, mask_dir = root / m / f"image_{m}", root / m / f"mask_{m}"
            for p in range(patients):
                pid = f"{m}{p:03d}"
                pairs = [brainlike(rng, size, m) for _ in range(slices)]
                if fmt == "nifti":
                    write_nifti(img_dir / f"{pid}.nii.gz", np.stack([a for a, _ in pairs]))
                    write_nifti(
                        mask_dir / f"{pid}.nii.gz", np.stack([b for _, b in pairs]), dtype="uint8"
                    )
                    continue
                for k, (img, mask) in enumerate(pairs):
                    name = f"{pid}_{k:03d}"
                    if fmt == "dicom":
                        write_dicom(
                            img_dir / f"{name}.dcm", img, modality=m, patient_id=pid, slice_index=k
                        )
                    else:
                        write_png(img_dir / f"{name}.png", native_to_stored(img, 16, m), bits=16)
                    write_png(mask_dir / f"{name}.png", mask * 255)
        return root

    return make


# ---- tiny simulated data sets: built once per session, shared, read-only ----

#: the smallest built-in data set a study runs on: 5 + 5 unpaired patients, 2 paired test
#: and (the default) 4 paired validation patients, 2 slices each, 32 px PNG
TINY_PHANTOM: dict[str, Any] = {
    "mri_patients": 5,
    "ct_patients": 5,
    "test_patients": 2,
    "slices_per_patient": 2,
    "size": 32,
    "fmt": "png",
}


def _tree_digest(root: Path) -> str:
    """Names and bytes of every file under ``root``."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Path]]:
    """Factory: ``simulated(**params)`` -> the folder of ``simulate_dataset`` with
    ``TINY_PHANTOM`` updated by ``params`` (one rendering process, no progress bar), built
    once per session for each distinct ``params``. The folders are shared, so READ-ONLY: a
    test that changes, adds or removes files copies the folder first (``shutil.copytree``);
    the session's end fails if a shared folder was changed."""
    from mrict.phantom.simulate import simulate_dataset

    built: dict[tuple[tuple[str, Any], ...], tuple[Path, str]] = {}

    def make(**params: Any) -> Path:
        args = {**TINY_PHANTOM, **params}
        key = tuple(sorted(args.items()))
        if key not in built:
            root = tmp_path_factory.mktemp("phantom") / "data"
            simulate_dataset(root, progress=False, workers=1, **args)
            built[key] = (root, _tree_digest(root))
        return built[key][0]

    yield make
    changed = [str(root) for root, digest in built.values() if _tree_digest(root) != digest]
    assert not changed, f"tests changed shared simulated data sets (copy them first): {changed}"


@pytest.fixture(scope="session")
def tiny_phantom(simulated: Callable[..., Path]) -> Path:
    """The ``TINY_PHANTOM`` data set folder (shared by the session: read-only)."""
    return simulated()


@pytest.fixture
def tiny_phantom_params() -> dict[str, Any]:
    """A fresh copy of ``TINY_PHANTOM``: the ``simulate_dataset`` keywords of ``tiny_phantom``."""
    return dict(TINY_PHANTOM)


# ---- tiny networks ----

#: ``quick`` segmentation preset of tiny U-Nets (what ``mrict study``/``demo`` train)
TINY_SEG_PRESET: dict[str, Any] = {
    "image_size": 32,
    "channels": (4, 8),
    "num_res_units": 1,
    "batch_size": 4,
    "iterations": 2,
    "val_every": 1,
    "patience": 0,
    "augment": False,
}
#: ``quick`` CycleGAN preset of tiny generators and discriminators
TINY_GAN_PRESET: dict[str, Any] = {
    "image_size": 32,
    "ngf": 4,
    "n_blocks": 1,
    "ndf": 4,
    "batch_size": 2,
    "iterations": 2,
    "checkpoint_every": 100,
    "sample_count": 1,
}
#: SegConfig options of a tiny but learning U-Net (``train_segmenter`` called directly)
TINY_UNET: dict[str, Any] = {
    "image_size": 32,
    "channels": (8, 16, 32),
    "num_res_units": 1,
    "batch_size": 8,
    "augment": False,
}


def install_tiny_presets(
    mp: pytest.MonkeyPatch, seg: dict[str, Any] | None = None, gan: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Replace the ``quick`` presets by ``TINY_SEG_PRESET``/``TINY_GAN_PRESET`` updated by
    ``seg``/``gan``, through ``mp`` (undone with it); return the two presets."""
    from mrict.segmentation.config import SEG_PRESETS
    from mrict.translation.config import GAN_PRESETS

    seg_preset = {**TINY_SEG_PRESET, **(seg or {})}
    gan_preset = {**TINY_GAN_PRESET, **(gan or {})}
    mp.setitem(SEG_PRESETS, "quick", seg_preset)
    mp.setitem(GAN_PRESETS, "quick", gan_preset)
    return seg_preset, gan_preset


@pytest.fixture(scope="session")
def tiny_presets() -> Callable[..., tuple[dict[str, Any], dict[str, Any]]]:
    """``tiny_presets(monkeypatch, seg={...}, gan={...})``: :func:`install_tiny_presets`
    (any scope: pass the test's ``monkeypatch`` or a module's ``pytest.MonkeyPatch``)."""
    return install_tiny_presets


@pytest.fixture(scope="session")
def tiny_seg_config() -> Callable[..., Any]:
    """``tiny_seg_config(**options)`` -> ``SegConfig(**TINY_UNET)`` updated by ``options``."""
    from mrict.segmentation.config import SegConfig

    return lambda **options: SegConfig(**{**TINY_UNET, **options})
