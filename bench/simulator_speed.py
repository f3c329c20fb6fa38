"""Simulator throughput: rendered slices per second at a given size (no file writing), and
end to end through ``simulate_dataset`` (rendering + DICOM writing)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from mrict.phantom.simulate import (
    SimulationParams,
    _render_patient,
    default_workers,
    simulate_dataset,
)


def bench_simulator(
    n_patients: int = 10, slices: int = 8, size: int = 256, fmt: str = "dicom"
) -> dict:
    """Return rendering-only and end-to-end slices/second (an MR or CT image = one slice)."""
    params = SimulationParams(slices_per_patient=slices, size=size)
    _render_patient(params, "MR", 999)  # warm the atlas cache
    start = time.perf_counter()
    for i in range(n_patients):
        _render_patient(params, "MR", i)
        _render_patient(params, "CT", i)
    render_s = time.perf_counter() - start
    n = 2 * n_patients * slices
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        simulate_dataset(
            Path(tmp) / "d",
            mri_patients=n_patients,
            ct_patients=n_patients,
            test_patients=0,
            slices_per_patient=slices,
            size=size,
            fmt=fmt,
            progress=False,
        )
        e2e_s = time.perf_counter() - start
    return {
        "workers": default_workers(),
        "size": size,
        "slices": n,
        "render_slices_per_s": n / render_s,
        f"end_to_end_{fmt}_slices_per_s": n / e2e_s,
    }


if __name__ == "__main__":
    print(bench_simulator())
