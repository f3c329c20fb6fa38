"""Each benchmark runs on tiny sizes and produces well-formed results (never timed)."""

from __future__ import annotations

import inspect
import math

import pytest

from bench import run_one, run_suite
from bench.common import Settings

TINY = Settings(tiny=True)


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_cyclegan_benchmark_tiny():
    from bench.cyclegan_step import other_precision
    from mrict.runtime.device import resolve_precision

    r = run_one("cyclegan", TINY)
    assert len(r.rows) == 2 and r.peak_rss_mb > 0
    # the second row checks the automatic precision by running the other one
    auto = resolve_precision("cpu", "auto")
    assert [row["mrict precision"] for row in r.rows] == [auto, other_precision("cpu")]
    assert auto != other_precision("cpu")
    for row in r.rows:
        assert _positive(row["reference s/step"]) and _positive(row["mrict s/step"])
        assert row["speed-up"] == pytest.approx(row["reference s/step"] / row["mrict s/step"])
        assert row["steps"] == 2 and _positive(row["conv GFLOP/step"])
    assert _positive(r.values["peak_fp32_flops"]) and _positive(r.values["peak_bf16_flops"])


def test_inference_and_segmentation_tiny():
    inf = run_one("inference", TINY)
    # reference, fp32, auto, end to end fp32 and auto
    assert [row["slices"] for row in inf.rows] == [4, 4, 4, 4, 4]
    assert all(_positive(row["slices/s"]) for row in inf.rows)
    seg = run_one("segmentation", TINY)
    assert len(seg.rows) == 2 and all(_positive(row["s/step"]) for row in seg.rows)


def test_scaling_epochs_tiny():
    import bench.scaling

    r = bench.scaling.run(TINY, ddp=False)
    images = [row["train images"] for row in r.rows]
    assert len(images) == 3 and images[0] < images[1] < images[2]
    assert all(_positive(row["s/epoch"]) for row in r.rows)


@pytest.mark.slow
def test_scaling_with_ddp_tiny():
    r = run_one("scaling", TINY)
    ddp = [row for row in r.rows if row["what"].startswith("DDP")]
    assert len(ddp) >= 2 and all(_positive(row["images/s"]) for row in ddp)


@pytest.mark.slow
def test_quality_tiny():
    r = run_one("quality", TINY)
    assert len(r.rows) == 2 and all(math.isfinite(row["MR->CT MAE HU"]) for row in r.rows)


def test_threads_benchmark_tiny():
    """Solo and pair runs in their own processes; the pair's rate is the sum over the
    window both ran, and auto records the threads each process chose."""
    r = run_one("threads", TINY)
    runs = [row["run"] for row in r.rows]
    assert runs == ["alone, threads default", "alone, threads auto", "pair, default", "pair, auto"]
    assert all(float(row["images/s"]) > 0 for row in r.rows[:2])  # alone
    # a pair can collapse to no step at all inside a 2 s window (that is what it measures)
    assert all(float(row["images/s"]) >= 0 for row in r.rows[2:])
    assert r.rows[2]["threads"].count("+") == 1 and r.rows[3]["threads"].count("+") == 1
    assert _positive(r.values["seg_pair_auto_ratio"]) and _positive(r.values["seg_solo_auto_ratio"])


def test_stages_under_load_tiny():
    """Both demo stages run through the CLI alone and under the foreign load; every time
    and ratio is recorded, with the threads the stage processes used."""
    r = run_one("stages_under_load", TINY)
    assert [row["stage"].split(":")[0] for row in r.rows] == ["CycleGAN", "segmenters"]
    for key, row in zip(("gan", "study"), r.rows, strict=True):
        assert _positive(row["alone s"]) and _positive(row["under load s"])
        assert row["ratio"] == pytest.approx(row["under load s"] / row["alone s"])
        assert r.values[f"{key}_ratio"] == row["ratio"]
        assert row["threads alone"] and row["threads under load"]
        assert row["thread changes alone/load"].count("/") == 1
    assert r.rows[1]["threads alone"].count("x") == 1  # processes x threads each
    assert r.values["load_threads"] >= 1
    assert _positive(r.values["study_train_alone_s"]) and _positive(r.values["study_train_load_s"])


def test_time_to_quality_tiny():
    """Both schedules are trained and scored; every scoring point gets a time that grows with
    the iterations, and the summary compares the two runs' final scores and times."""
    r = run_one("time_to_quality", TINY)
    preset = [row for row in r.rows if row["schedule"].startswith("preset")]
    short = [row for row in r.rows if row["schedule"].startswith("short")]
    assert [row["iteration"] for row in preset] == [2, 4]
    assert [row["iteration"] for row in short] == [2]
    assert 0 < preset[0]["seconds"] < preset[1]["seconds"]
    assert all(math.isfinite(row["score"]) for row in r.rows)
    assert r.values["preset_score"] == preset[-1]["score"]
    assert r.values["short_score"] == short[-1]["score"]
    assert r.values["time_ratio"] == pytest.approx(
        r.values["short_seconds"] / r.values["preset_seconds"]
    )
    assert r.values["reached"] == (r.values["short_score"] <= r.values["preset_score"] * 1.02)


def test_pair_rate_counts_only_the_common_window():
    from bench.threads import _rate

    stamps = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert _rate(stamps, 8, 0.0, 5.0) == pytest.approx(8.0)  # 5 steps of 8 images in 5 s
    assert _rate(stamps, 8, 2.0, 4.0) == pytest.approx(8.0)
    assert _rate(stamps, 8, 4.5, 9.0) == 0.0  # one step only: no rate


def test_suite_isolated_writes_results(tmp_path):
    out = tmp_path / "RESULTS.md"
    out.write_text("# mrict benchmark results\n\nolder run\n")
    results = run_suite(TINY, ["data"], out, isolate=True, note="test", echo=lambda m: None)
    text = out.read_text()
    assert text.startswith("# mrict benchmark results") and "older run" in text
    assert "### Data: simulator and DICOM reading" in text and "- note: test" in text
    assert results[0].peak_rss_mb > 0 and all(_positive(r["slices/s"]) for r in results[0].rows)


def test_cli_bench(tmp_path, capsys):
    from mrict.cli import run

    assert run(["bench", "--only", "nope"]) == 2
    assert "unknown benchmark nope" in capsys.readouterr().err
    out = tmp_path / "r.md"
    assert run(["bench", "--tiny", "--only", "data", "--out", str(out)]) == 0
    assert "### Data: simulator and DICOM reading" in out.read_text()


def test_cli_help_names_every_benchmark():
    """`mrict bench --only` lists every benchmark the suite has."""
    import bench
    from mrict.commands.bench import bench_command

    text = next(
        p.default.help
        for n, p in inspect.signature(bench_command).parameters.items()
        if n == "only"
    )
    for name in bench.BENCHMARKS:
        assert name in text
