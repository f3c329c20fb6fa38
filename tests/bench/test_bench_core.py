"""Benchmark helpers: FLOP counting, timing, the reference step, result files."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench import render, run_suite
from bench.common import Result, Settings, interleaved, machine_info, markdown_table
from bench.flops import count_flops, peak_matmul_flops
from bench.reference_cyclegan import ReferenceCycleGAN, ReferencePool


def test_conv_flops_match_the_formula():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    fwd = count_flops(lambda: conv(x))
    assert fwd["conv"] == 2 * 2 * 5 * 3 * 9 * 8 * 8
    both = count_flops(lambda: conv(x).sum().backward())
    # backward computes the input and weight gradients: twice the forward work
    assert both["conv"] == 3 * fwd["conv"]


def test_reference_flops_scale_with_batch_on_meta():
    def flops(b):
        ref = ReferenceCycleGAN(4, 1, 4, 2, device="meta")
        x = torch.empty(b, 1, 32, 32, device="meta")
        return count_flops(lambda: ref.step(x, x))["conv"]

    one, two = flops(1), flops(2)
    assert one > 0 and two == 2 * one


def test_peak_matmul_positive():
    r = peak_matmul_flops(torch.float32, "cpu", sizes=(64,), repeats=2, budget_s=0.5)
    assert r["flops_per_s"] > 0 and r["n"] == 64


def test_reference_step_trains_all_four_networks():
    ref = ReferenceCycleGAN(4, 1, 4, 2, pool_size=2, seed=1)
    nets = (ref.g_mr2ct, ref.g_ct2mr, ref.d_mr, ref.d_ct)
    before = [torch.cat([p.detach().flatten() for p in n.parameters()]).clone() for n in nets]
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    losses = ref.step(x, x.flip(-1))
    assert set(losses) >= {"G_total", "cycle", "identity", "D_mr", "D_ct"}
    assert all(math.isfinite(v) for v in losses.values())
    after = [torch.cat([p.detach().flatten() for p in n.parameters()]) for n in nets]
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(p.requires_grad for p in ref.d_mr.parameters())


def test_reference_pool_fills_then_mixes():
    pool = ReferencePool(size=2, seed=0)
    first = torch.zeros(2, 1, 4, 4)
    assert torch.equal(pool.query(first), first)
    seen_old = False
    for i in range(20):
        out = pool.query(torch.full((1, 1, 4, 4), float(i + 1)))
        assert out.shape == (1, 1, 4, 4)
        seen_old |= out.max().item() != i + 1
    assert seen_old and len(pool.images) == 2


def test_interleaved_alternates_and_counts():
    calls: list[str] = []
    times = interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, steps=3, warmup=1
    )
    assert [len(v) for v in times.values()] == [3, 3]
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]


def test_markdown_and_render_are_well_formed():
    res = Result(
        "x",
        "Title X",
        rows=[{"a": 1.23456, "b": "t"}, {"a": float("nan"), "c": 2}],
        notes=["n1"],
        wall_s=1.0,
        peak_rss_mb=10.0,
    )
    table = markdown_table(res.rows).splitlines()
    assert table[0] == "| a | b | c |" and len(table) == 4
    assert all(line.count("|") == 4 for line in table)
    text = render([res], machine_info("cpu"), Settings(quick=True))
    assert "### Title X" in text and "- torch: " in text and "peak resident memory" in text
    assert "(quick, device cpu)" in text


def test_unknown_benchmark_refused(tmp_path):
    with pytest.raises(KeyError):
        run_suite(Settings(tiny=True), ["nope"], tmp_path / "r.md", isolate=False)


def test_failure_is_reported_and_suite_continues(tmp_path, monkeypatch):
    import bench.data_io

    def boom(s):
        raise RuntimeError("exploded")

    monkeypatch.setattr(bench.data_io, "run", boom)
    out = tmp_path / "r.md"
    results = run_suite(Settings(tiny=True), ["data"], out, isolate=False, echo=lambda m: None)
    assert results[0].title.endswith("FAILED") and "exploded" in results[0].values["error"]
    assert "FAILED" in out.read_text()
