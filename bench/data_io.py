"""Data: simulator slices/s and reading DICOM slices cold (evicted from the page cache)
and warm, file by file and through ``load_modality`` (read + normalise + resize), without
and with mrict's prepared-slice cache (:mod:`mrict.data.cache`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.common import Result, Settings
from bench.simulator_speed import bench_simulator


def evict(paths: list[Path]) -> bool:
    """Ask the kernel to drop these files from the page cache (no root needed for clean
    pages); False where the platform cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    os.sync()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


@contextlib.contextmanager
def slice_cache_in(folder: Path) -> Iterator[None]:
    """Point mrict's prepared-slice cache at ``folder`` (and enable it) for the block."""
    saved = {k: os.environ.get(k) for k in ("MRICT_CACHE_DIR", "MRICT_NO_CACHE")}
    os.environ["MRICT_CACHE_DIR"] = str(folder)
    os.environ.pop("MRICT_NO_CACHE", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(s: Settings) -> Result:
    from mrict.data.cache import LazySlice
    from mrict.data.datasets import load_modality
    from mrict.data.io import read_slices, write_dicom

    res = Result("data", "Data: simulator and DICOM reading")
    if s.tiny:
        sim = {"n_patients": 1, "slices": 2, "size": 64}
        n_slices, size = 20, 64
    elif s.quick:
        sim = {"n_patients": 10, "slices": 8, "size": 256}
        n_slices, size = 200, 256
    else:
        # 480 slices: the one-off start-up of each rendering process (about 0.7 s to smooth
        # the atlas) weighs as it does in a data set of a few hundred slices
        sim = {"n_patients": 30, "slices": 8, "size": 256}
        n_slices, size = 1000, 256
    r = bench_simulator(**sim)
    res.rows.append(
        {
            "what": f"simulator render only ({r['size']} px, 1 process)",
            "slices": r["slices"],
            "slices/s": r["render_slices_per_s"],
        }
    )
    res.rows.append(
        {
            "what": f"simulator end to end (render + DICOM files, {r['workers']} processes)",
            "slices": r["slices"],
            "slices/s": r["end_to_end_dicom_slices_per_s"],
        }
    )
    with tempfile.TemporaryDirectory(prefix="mrict-bench-") as tmp:
        root = Path(tmp) / "data"
        img_dir = root / "CT" / "image_CT"
        img_dir.mkdir(parents=True)
        rng = np.random.default_rng(s.seed)
        files = []
        per_patient = 20
        for i in range(n_slices):
            hu = rng.uniform(-1024, 2000, (size, size)).astype(np.float32)
            path = img_dir / f"P{i // per_patient:03d}_{i % per_patient:03d}.dcm"
            write_dicom(
                path,
                hu,
                modality="CT",
                patient_id=f"P{i // per_patient:03d}",
                slice_index=i % per_patient,
            )
            files.append(path)
        cold_ok = evict(files)
        t0 = time.perf_counter()
        for f in files:
            read_slices(f, "CT")
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        for f in files:
            read_slices(f, "CT")
        warm = time.perf_counter() - t0
        evict(files)
        t0 = time.perf_counter()
        load_modality(root, "CT", size=size, progress=False, cache=False)
        prep_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        load_modality(root, "CT", size=size, progress=False, cache=False)
        prep_warm = time.perf_counter() - t0
        cache_folder = Path(tmp) / "slice-cache"
        with slice_cache_in(cache_folder):
            evict(files)
            t0 = time.perf_counter()
            load_modality(root, "CT", size=size, progress=False)
            fill = time.perf_counter() - t0
            t0 = time.perf_counter()
            hit = load_modality(root, "CT", size=size, progress=False)
            from_cache = time.perf_counter() - t0
            entries = sorted(cache_folder.glob("*.npz"))
            evict(files + entries)
            t0 = time.perf_counter()
            load_modality(root, "CT", size=size, progress=False)
            from_cache_cold = time.perf_counter() - t0
        was_hit = bool(hit.slices) and all(isinstance(x, LazySlice) for x in hit.slices)
        cache_mb = sum(p.stat().st_size for p in entries) / 2**20 if entries else 0.0
    cold_label = "cold (evicted from page cache)" if cold_ok else "first read (no eviction)"
    res.rows += [
        {
            "what": f"read_slices, DICOM {size} px, {cold_label}",
            "slices": n_slices,
            "slices/s": n_slices / cold,
        },
        {
            "what": f"read_slices, DICOM {size} px, warm page cache",
            "slices": n_slices,
            "slices/s": n_slices / warm,
        },
        {
            "what": f"load_modality (read + normalise + resize), no slice cache, {cold_label}",
            "slices": n_slices,
            "slices/s": n_slices / prep_cold,
        },
        {
            "what": "load_modality, no slice cache, warm page cache",
            "slices": n_slices,
            "slices/s": n_slices / prep_warm,
        },
        {
            "what": f"load_modality, slice cache empty (first call, fills it), {cold_label}",
            "slices": n_slices,
            "slices/s": n_slices / fill,
        },
        {
            "what": "load_modality from the slice cache (second call)",
            "slices": n_slices,
            "slices/s": n_slices / from_cache,
        },
        {
            "what": f"load_modality from the slice cache, cache file {cold_label}",
            "slices": n_slices,
            "slices/s": n_slices / from_cache_cold,
        },
    ]
    res.values = {
        "simulator": r,
        "read_cold_s": cold,
        "read_warm_s": warm,
        "load_cold_s": prep_cold,
        "load_warm_s": prep_warm,
        "load_cache_fill_s": fill,
        "load_from_cache_s": from_cache,
        "load_from_cache_cold_s": from_cache_cold,
        "cache_hit": was_hit,
        "cache_file_mb": cache_mb,
        "n_slices": n_slices,
    }
    res.notes.append(
        "The slice cache (mrict.data.cache, one .npz per data set and options) holds the "
        f"prepared {size} px float32 slices ({cache_mb:.1f} MB here); a hit still lists and "
        "stats every file to check that none changed. 'warm' is the OS page cache."
    )
    if not was_hit:
        res.notes.append("the second call did not hit the slice cache (unwritable folder?)")
    return res
