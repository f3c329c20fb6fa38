"""Shared fixtures: small data sets in every supported format, built in a temp folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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
