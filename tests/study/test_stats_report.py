"""Study statistics, label subsampling and the automatically written conclusion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mrict.data.datasets import SliceSet
from mrict.report.html import conclusion
from mrict.study.analysis import comparisons, summarise
from mrict.study.scenarios import label_subset
from mrict.study.stats import mean_ci, paired_wilcoxon


def test_mean_ci_hand_computed() -> None:
    r = mean_ci([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.302653; sd = 1; half-width = 4.302653 / sqrt(3)
    assert r["mean"] == 2.0
    assert r["hi"] - r["mean"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    single = mean_ci([0.5, math.nan])
    assert single["n"] == 1 and math.isnan(single["lo"])


def test_wilcoxon() -> None:
    r = paired_wilcoxon([1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0])
    assert r["p"] == pytest.approx(2 / 2**6)  # exact: all six differences positive
    assert r["mean_diff"] == 3.5
    same = paired_wilcoxon([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert math.isnan(same["p"])


def test_label_subset_keeps_fraction_of_patients() -> None:
    n = 8
    ids = [f"P{i // 2}" for i in range(n)]
    s = SliceSet(
        "CT", np.zeros((n, 4, 4), np.float32), np.zeros((n, 4, 4), np.uint8), np.ones(n, bool), ids
    )
    sub = label_subset(s, 0.25, seed=0)
    assert len(sub) == n
    assert len({p for p, h in zip(sub.patient_ids, sub.has_mask, strict=True) if h}) == 1
    assert label_subset(s, 0.25, seed=0).has_mask.tolist() == sub.has_mask.tolist()
    assert s.has_mask.all()  # the input is not modified
    assert label_subset(s, 1.0, seed=0) is s


def _rows(delta: float, patients: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for scenario, f, shift in (
        ("target_only", 1.0, 0.0),
        ("source_only", 0.0, -0.3),
        ("translated", 0.0, -0.1),
        ("target_translated", 1.0, delta),
    ):
        for seed in (0, 1):
            for p in range(patients):
                d = 0.6 + shift + 0.01 * p + rng.normal(0, 0.001)
                rows.append(
                    {
                        "target": "CT",
                        "scenario": scenario,
                        "label_fraction": f,
                        "seed": seed,
                        "patient": f"P{p}",
                        "dice": d,
                        "iou": d / (2 - d),
                        "hd95": 3.0,
                    }
                )
    return rows


def test_conclusion_wording_follows_p_value() -> None:
    for delta, patients, expect in ((0.1, 8, "significantly higher"), (0.1, 4, "no significant")):
        rows = _rows(delta, patients)
        summary = summarise(rows)
        tests = comparisons(rows, [1.0])
        text = " ".join(conclusion({"summary": summary, "tests": tests}))
        four_vs_one = next(t for t in tests if t["a"] == "target_translated")
        assert (four_vs_one["p"] < 0.05) == (expect == "significantly higher")
        assert expect in text
        if patients < 6:
            assert "cannot reach" in text
    row = next(r for r in summarise(_rows(0.1, 8)) if r["scenario"] == "target_only")
    assert row["seeds"] == 2 and row["patients"] == 8
    assert row["dice_ci_patients_lo"] < row["dice_mean"] < row["dice_ci_patients_hi"]


def test_report_rebuilds_from_results_json_alone(tmp_path) -> None:
    """`mrict report STUDY` rewrites report.html from results.json, reuses model figures,
    and refuses a folder without (valid) results in one line."""
    import json

    from mrict.cli import run
    from mrict.study.analysis import comparisons, summarise

    rows = _rows(0.05, 8)
    info = {
        "data": "d",
        "gan_run": "g",
        "preset": "quick",
        "timing_s": {},
        "data_summary": {},
        "split_seed": 0,
        "seeds": [0, 1],
        "label_fractions": [1.0],
        "segmentation_config": {},
        "gan_config": {"use_target_masks": False},
        "empty_counts": {},
        "platform": "test",
    }
    doc = {
        "info": info,
        "summary": summarise(rows),
        "tests": comparisons(rows, [1.0]),
        "per_patient": rows,
    }
    study = tmp_path / "study"
    (study / "figures").mkdir(parents=True)
    (study / "results.json").write_text(json.dumps(doc))
    png = study / "figures" / "overlays.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert run(["report", str(study)]) == 0
    html = (study / "report.html").read_text()
    assert "Conclusion" in html and "(4) target" in html
    assert (study / "figures" / "segmentation_metrics.png").stat().st_size > 1000
    assert "overlays" in html and "source masks only" in html
    assert html.count("(5) self-training") >= 1
    assert run(["report", str(tmp_path / "nothing")]) == 2
    (study / "results.json").write_text("{not json")
    assert run(["report", str(study)]) == 2
