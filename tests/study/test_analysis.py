"""Study statistics with seeds: bootstrap intervals, exact paired tests, effect sizes, Holm,
the summary and comparison tables, their HTML rendering and the study defaults."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import mrict.study.run as study_run
from mrict.cli import run
from mrict.report.html import build_html, results_table, statistics_table
from mrict.study.analysis import (
    CI_PATIENTS_METHOD,
    comparisons,
    default_pairs,
    preset_seeds,
    summarise,
)
from mrict.study.scenarios import SELECTION
from mrict.study.stats import (
    bootstrap_ci,
    holm,
    mean_ci,
    paired_test_with_seeds,
    paired_wilcoxon,
    sign_flip_test,
)

HAND = [0.1, 0.2, 0.3, -0.05]


def test_bootstrap_ci_clipped_to_range() -> None:
    ones = bootstrap_ci([1.0] * 15, clip=(0.0, 1.0))
    assert (ones["estimate"], ones["lo"], ones["hi"]) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(0)
    for k in range(20):
        x = np.minimum(1.0, 1.0 - rng.exponential(1e-3, 15) * (k % 3))
        x[: k % 4] = 0.1 * (k % 2)  # a few failures give a long lower tail
        for method in ("bca", "percentile"):
            r = bootstrap_ci(x, clip=(0.0, 1.0), method=method)
            assert 0.0 <= r["lo"] <= r["estimate"] <= r["hi"] <= 1.0
    # the mean of 0.1s rounds above 0.1 (1.5000000000000002 / 15): clipping keeps it in range
    tenths = bootstrap_ci([0.1] * 15, clip=(0.0, 0.1))
    assert tenths["hi"] <= 0.1 and tenths["lo"] == tenths["hi"]
    diff = bootstrap_ci([1.0] * 6, clip=(-1.0, 1.0))
    assert diff["hi"] == 1.0
    # a Student-t interval of a high Dice runs past 1 unless clipped
    assert mean_ci([0.99, 0.7, 0.98])["hi"] > 1.0
    assert mean_ci([0.99, 0.7, 0.98], clip=(0.0, 1.0))["hi"] == 1.0


def test_bootstrap_ci_deterministic_and_hand_case() -> None:
    x = np.random.default_rng(3).beta(6, 2, 15)
    assert bootstrap_ci(x) == bootstrap_ci(x)
    assert bootstrap_ci(x, seed=1) != bootstrap_ci(x)
    # two patients: resampled means are 0.65, 0.75, 0.85 with weights 1/4, 1/2, 1/4, so the
    # 95% percentile interval is [0.65, 0.85]; BCa has no bias (z0 = 0) nor skew (a = 0) here
    for method in ("percentile", "bca"):
        r = bootstrap_ci([0.65, 0.85], method=method)
        assert r["estimate"] == pytest.approx(0.75)
        assert (r["lo"], r["hi"]) == pytest.approx((0.65, 0.85))
    assert math.isnan(bootstrap_ci([0.5])["lo"]) and bootstrap_ci([])["n"] == 0
    # with 15 patients the interval is close to, and inside the range of, the t-interval's
    r, t = bootstrap_ci(x), mean_ci(x)
    assert r["estimate"] == pytest.approx(t["mean"])
    assert abs((r["hi"] - r["lo"]) - (t["hi"] - t["lo"])) < 0.3 * (t["hi"] - t["lo"])


def test_sign_flip_hand_computed() -> None:
    # 16 sign patterns of (0.1, 0.2, 0.3, 0.05); |sum| >= 0.55 only when 0.1, 0.2 and 0.3
    # share a sign (sums +-0.65 and +-0.55): 4 of 16
    assert sign_flip_test(HAND) == pytest.approx(4 / 16)
    assert sign_flip_test([0.1] * 15) == pytest.approx(2 / 2**15)
    assert sign_flip_test([0.0, 0.0]) == 1.0 and math.isnan(sign_flip_test([]))
    x = np.random.default_rng(5).normal(0.02, 0.1, 21)
    exact = sign_flip_test(x, exact_max=21)
    assert sign_flip_test(x, exact_max=20) == pytest.approx(exact, abs=0.01)  # Monte Carlo


def test_wilcoxon_exact() -> None:
    r = paired_wilcoxon(HAND, [0.0] * 4)
    # ranks of |d|: 0.05 -> 1, 0.1 -> 2, 0.2 -> 3, 0.3 -> 4; W- = 1; P(W- <= 1) = 2/16
    assert r["statistic"] == 1.0 and r["p"] == pytest.approx(2 * 2 / 16)
    rng = np.random.default_rng(1)
    for n in (5, 8, 12):
        d = np.round(rng.normal(0.03, 0.1, n), 2)  # ties and zeros
        nz = d[d != 0]
        ref = stats.wilcoxon(nz, method=stats.PermutationMethod(n_resamples=np.inf))
        got = paired_wilcoxon(d, np.zeros(n))
        assert got["p"] == pytest.approx(ref.pvalue) and got["statistic"] == ref.statistic
    d = rng.normal(0.03, 0.1, 15)
    assert paired_wilcoxon(d, np.zeros(15))["p"] == pytest.approx(stats.wilcoxon(d).pvalue)


def _per_seed(d: list[float], e: float) -> tuple[dict, dict]:
    a = {s: {f"P{i}": 0.6 + x + sign * e for i, x in enumerate(d)} for s, sign in ((0, 1), (1, -1))}
    b = {s: {f"P{i}": 0.6 for i in range(len(d))} for s in (0, 1)}
    return a, b


def test_paired_test_with_seeds_hand_case() -> None:
    a, b = _per_seed(HAND, 0.02)
    a[0]["P9"] = 0.9  # only in a: not paired
    b[1]["P0"] = math.nan  # P0 of b is then its seed-0 score alone (0.6)
    r = paired_test_with_seeds(a, b)
    assert r["n"] == 4 and r["n_seeds"] == 2
    assert r["mean_diff"] == pytest.approx(0.1375)
    assert r["median_diff"] == pytest.approx(0.15)
    assert r["p_signflip"] == pytest.approx(0.25)
    assert r["p"] == pytest.approx(0.25)
    # differences d: sd = sqrt(0.066875 / 3); d_z = 0.1375 / sd
    assert r["d_z"] == pytest.approx(0.1375 / math.sqrt(0.066875 / 3))
    assert r["d_z"] == pytest.approx(0.920940, abs=1e-6)
    assert -1.0 <= r["diff_ci_lo"] < r["mean_diff"] < r["diff_ci_hi"] <= 1.0
    assert r["d_z_ci_lo"] < r["d_z"] < r["d_z_ci_hi"]
    # seed 0: d + 0.02, seed 1: d - 0.02 (P0 of seed 1 unpaired there)
    assert r["seed_mean_diffs"][0] == pytest.approx(0.1575)
    assert r["seed_mean_diffs"][1] == pytest.approx(np.mean([0.18, 0.28, -0.07]))
    assert r["seeds_a_better"] == 1.0
    assert r["seed_sd"] == pytest.approx(np.std(list(r["seed_mean_diffs"].values()), ddof=1))
    # every seed agrees in sign, so the intersection-union p is the largest per-seed p
    assert r["p_every_seed"] == pytest.approx(max(r["seed_p"].values()))
    # seeds disagreeing in sign: "a better in every seed" is not supported
    flip = {0: {f"P{i}": 0.7 for i in range(6)}, 1: {f"P{i}": 0.5 for i in range(6)}}
    base = {s: {f"P{i}": 0.6 for i in range(6)} for s in (0, 1)}
    assert paired_test_with_seeds(flip, base)["p_every_seed"] == 1.0


def test_paired_test_with_seeds_power_with_15_patients() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.8, 15)
    a = {s: dict(enumerate(base + 0.05 + rng.normal(0, 0.03, 15))) for s in range(3)}
    b = {s: dict(enumerate(base + rng.normal(0, 0.03, 15))) for s in range(3)}
    r = paired_test_with_seeds(a, b)
    assert r["p"] < 1e-3 and r["p_signflip"] < 1e-3 and r["p_every_seed"] < 0.05
    assert r["diff_ci_hi"] - r["diff_ci_lo"] < 0.08


def test_holm_hand_computed() -> None:
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    assert holm([0.01, 0.04, None, 0.03])[0] == pytest.approx(0.03)
    out = holm([0.01, 0.04, math.nan, 0.03])
    assert out[1] == pytest.approx(0.06) and out[3] == pytest.approx(0.06)
    assert math.isnan(out[2]) and holm([]) == [] and holm([0.9, 0.8]) == [1.0, 1.0]


def _rows(scenarios: dict[tuple[str, float], float], patients: int = 6) -> list[dict]:
    rows = []
    for (scenario, f), level in scenarios.items():
        for seed in (0, 1, 2):
            for p in range(patients):
                d = level + 0.02 * p + 0.01 * seed
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


def test_comparisons_skip_missing_pairs() -> None:
    rows = _rows({("target_only", 1.0): 0.6, ("target_translated", 1.0): 0.65})
    tests = comparisons(rows, [1.0, 0.25])
    assert [(t["a"], t["b"], t["label_fraction"]) for t in tests] == [
        ("target_translated", "target_only", 1.0)
    ]
    t = tests[0]
    assert t["n"] == 6 and t["n_seeds"] == 3 and t["mean_diff"] == pytest.approx(0.05)
    assert t["p"] == pytest.approx(2 / 2**6) and t["p_holm"] == t["p"] and t["n_tests"] == 1
    rows += _rows(
        {("source_only", 0.0): 0.3, ("translated", 0.0): 0.5, ("self_training", 0.0): 0.55}
    )
    tests = comparisons(rows, [1.0, 0.25])
    assert [(t["a"], t["b"]) for t in tests] == [
        ("target_translated", "target_only"),
        ("translated", "source_only"),
        ("self_training", "translated"),
        ("self_training", "source_only"),
    ]
    assert all(t["n_tests"] == 4 for t in tests)
    assert all(t["p_holm"] == pytest.approx(min(1.0, 4 * t["p"])) for t in tests)  # equal p's
    custom = comparisons(rows, [], pairs=[("translated", 0.0, "missing", 0.0)])
    assert custom == []
    assert ("target_translated", 0.1, "target_only", 0.1) in default_pairs([1.0, 0.1])


def test_summarise_tiny_rows() -> None:
    rows = []
    for seed, (d0, d1) in enumerate(((0.8, 0.6), (0.9, 0.7))):
        for p, d in (("P0", d0), ("P1", d1)):
            rows.append(
                {
                    "target": "MR",
                    "scenario": "target_only",
                    "label_fraction": 1.0,
                    "seed": seed,
                    "patient": p,
                    "dice": d,
                    "iou": d / (2 - d),
                    "hd95": math.nan if p == "P1" else 2.0,
                    "val_dice": 0.7 + 0.1 * seed,
                }
            )
    rows.append({**rows[0], "scenario": "new_scenario", "val_dice": None})
    out = summarise(rows)
    assert [r["scenario"] for r in out] == ["target_only", "new_scenario"]  # unknown: last
    assert len({tuple(r) for r in out}) == 1  # every row has the same keys (one CSV header)
    r = out[0]
    assert (r["seeds"], r["patients"]) == (2, 2)
    # patient means 0.85, 0.65 -> 0.75; bootstrap over two patients -> [0.65, 0.85]
    assert r["dice_mean"] == pytest.approx(0.75)
    assert (r["dice_ci_patients_lo"], r["dice_ci_patients_hi"]) == pytest.approx((0.65, 0.85))
    # seed means 0.7, 0.8: t(0.975, 1) * 0.0707 / sqrt(2) = 0.635 -> [0.115, 1.385] -> hi 1
    assert r["dice_ci_seeds_lo"] == pytest.approx(0.75 - 12.7062 * 0.05, abs=1e-4)
    assert r["dice_ci_seeds_hi"] == 1.0
    assert r["dice_sd_seeds"] == pytest.approx(0.1 / math.sqrt(2))
    assert r["hd95_mean"] == 2.0 and r["ci_patients_method"] == CI_PATIENTS_METHOD
    assert r["val_dice"] == pytest.approx(0.75) and r["val_dice_seeds"] == 2
    assert r["selected_on"] == SELECTION["target_only"]
    assert math.isnan(out[1]["val_dice"]) and out[1]["val_dice_seeds"] == 0
    mapped = summarise(
        rows[:4],
        val_dice={("MR", "target_only", 1.0, 0): 0.5},
        selected_on={"target_only": "somewhere"},
    )[0]
    assert mapped["val_dice"] == pytest.approx((0.5 + 0.8) / 2)
    assert mapped["selected_on"] == "somewhere"


def _info() -> dict:
    return {
        "data": "d",
        "gan_run": "g",
        "preset": "quick",
        "timing_s": {"total": 1.0},
        "segmentation_config": {"image_size": 64},
        "metric_policy": "policy",
        "data_summary": {},
        "split_seed": 0,
        "model_selection": SELECTION,
        "seeds": [0, 1, 2],
        "label_fractions": [1.0],
        "gan_config": {},
        "empty_counts": {},
        "platform": "p",
    }


def test_report_tables_new_and_old_results() -> None:
    rows = _rows({("target_only", 1.0): 0.6, ("target_translated", 1.0): 0.65})
    rows += _rows({("self_training", 0.0): 0.55, ("translated", 0.0): 0.5})
    summary, tests = summarise(rows), comparisons(rows, [1.0])
    res = results_table(summary, _info())
    assert "bootstrap" in res and "val Dice" in res and SELECTION["target_only"] in res
    tab = statistics_table(tests)
    assert " vs " in tab and "2 tests are reported" in tab and "3/3" in tab
    # results.json written before the new fields: Student-t patient CI, no val/seed fields
    old_summary = [
        {k: v for k, v in r.items() if "val" not in k and k not in ("ci_patients_method",)}
        for r in summary
    ]
    old_tests = [
        {k: t[k] for k in ("target", "a", "b", "label_fraction", "n", "mean_diff", "p")}
        for t in tests
    ]
    page = build_html({"info": _info(), "summary": old_summary, "tests": old_tests}, {})
    assert "Student-t" in page and "n/a" in page and "Wilcoxon" in page
    new_page = build_html({"info": _info(), "summary": summary, "tests": tests}, {})
    assert "p (Holm)" in new_page


def test_study_defaults(tmp_path: Path, monkeypatch) -> None:
    sig = inspect.signature(study_run.run_study).parameters
    assert sig["seeds"].default is None
    assert tuple(sig["label_fractions"].default) == (1.0, 0.25, 0.1)
    assert (preset_seeds("quick"), preset_seeds("paper")) == (3, 5)
    calls: dict = {}

    def fake_study(data, out, **kw):
        calls.update(kw)
        return Path(out)

    monkeypatch.setattr(study_run, "run_study", fake_study)
    data = tmp_path / "data"
    data.mkdir()
    assert run(["study", str(data), "--out", str(tmp_path / "s")]) == 0
    assert calls["seeds"] is None and calls["label_fractions"] == [1.0, 0.25, 0.1]
    assert run(["study", str(data), "--out", str(tmp_path / "s"), "--seeds", "2"]) == 0
    assert list(calls["seeds"]) == [0, 1]
