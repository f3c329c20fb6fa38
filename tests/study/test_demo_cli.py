"""Wiring of ``mrict demo`` and argument checks of ``mrict study`` (the study itself is
covered end to end in test_study_e2e.py)."""

from __future__ import annotations

from pathlib import Path

import mrict.commands.study as study_cmd
import mrict.study.run as study_run
from mrict.cli import run


def test_demo_simulates_then_runs_quick_study(tmp_path: Path, monkeypatch, capsys) -> None:
    calls: dict = {}

    def fake_study(data, out, **kw):
        calls.update(data=Path(data), out=Path(out), **kw)
        Path(out).mkdir(parents=True, exist_ok=True)
        return Path(out)

    monkeypatch.setattr(study_run, "run_study", fake_study)
    monkeypatch.setattr(
        study_cmd,
        "DEMO_DATA",
        {
            "mri_patients": 3,
            "ct_patients": 3,
            "test_patients": 1,
            "slices_per_patient": 1,
            "size": 32,
            "fmt": "png",
        },
    )
    assert run(["demo", "--out", str(tmp_path / "demo"), "--seed", "3"]) == 0
    assert (tmp_path / "demo" / "data" / "manifest.json").is_file()
    assert calls["preset"] == "quick" and list(calls["seeds"]) == list(
        range(3, 3 + study_cmd.DEMO_SEEDS)
    )
    assert calls["label_fractions"] == study_cmd.DEMO_FRACTIONS
    assert "report.html" in capsys.readouterr().out
    # a second run reuses the simulated data
    stamp = (tmp_path / "demo" / "data" / "manifest.json").stat().st_mtime_ns
    assert run(["demo", "--out", str(tmp_path / "demo")]) == 0
    assert (tmp_path / "demo" / "data" / "manifest.json").stat().st_mtime_ns == stamp


def test_study_argument_errors(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    assert run(["study", str(data), "--out", str(tmp_path / "s"), "--seeds", "0"]) == 2
    assert run(["study", str(data), "--out", str(tmp_path / "s"), "--label-fraction", "x"]) == 2
    assert run(["study", str(data), "--out", str(data)]) == 2
    assert run(["study", str(data), "--out", str(tmp_path / "s"), "--translator-tries", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 4
    assert "--translator-tries must be at least 1" in err
    assert not (tmp_path / "s").exists()  # refused before any work
