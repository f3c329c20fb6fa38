"""Print how many hostile files the property-based tests tried."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter):
    try:
        from hostile import OUTCOMES, TRIED
    except ImportError:
        return
    if not TRIED:
        return
    counts = ", ".join(f"{fmt}={TRIED[fmt]}" for fmt in ("dicom", "nifti", "png"))
    detail = ", ".join(f"{k}={v}" for k, v in sorted(OUTCOMES.items()))
    terminalreporter.write_line(f"hostile inputs tried: {counts} ({detail})")
