"""U-Net training (``train_segmenter`` / ``mrict train-seg``): SIGINT/SIGTERM save a
checkpoint and name the exact resume command, ``--resume`` ends on the same weights as an
uninterrupted run, resuming with other settings is refused, and a NaN/Inf loss stops
(naming the step and the term, keeping the last good checkpoint) or is skipped."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import mrict.segmentation.trainer as trainer_module
from mrict.cli import run
from mrict.data.datasets import SliceSet
from mrict.errors import MrictError
from mrict.runtime.checkpoint import load_checkpoint
from mrict.runtime.interrupt import TrainingInterrupted
from mrict.runtime.numerics import NonFiniteLossError
from mrict.segmentation.config import SegConfig
from mrict.segmentation.trainer import train_segmenter

TINY = dict(
    image_size=32,
    channels=(4, 8),
    num_res_units=1,
    norm="batch",
    batch_size=4,
    augment=True,
    dropout=0.1,
    val_every=3,
    patience=0,
    precision="fp32",
    device="cpu",
)


def _disks(n: int, seed: int, prefix: str) -> SliceSet:
    """Bright disks (the masks) on a dark, noisy background; 2 slices per patient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    images = np.full((n, 32, 32), -0.8, np.float32)
    masks = np.zeros((n, 32, 32), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(8, 24, 2)
        masks[i] = np.hypot(yy - cy, xx - cx) < rng.uniform(3, 6)
        images[i][masks[i] > 0] = 0.6
    images += rng.normal(0, 0.05, images.shape).astype(np.float32)
    return SliceSet("MR", images, masks, np.ones(n, bool), [f"{prefix}{i // 2}" for i in range(n)])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks run fastest (and steadiest on a busy machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sets() -> tuple[SliceSet, SliceSet]:
    return _disks(10, 1, "T"), _disks(4, 2, "V")


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "model")[0]["unet"]


def _signal_at(step: int, sig: int = signal.SIGINT):
    def on_step(iteration: int) -> None:
        if iteration == step:
            os.kill(os.getpid(), sig)

    return on_step


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_checkpoint_and_resume_is_bit_exact(sets, tmp_path, sig):
    train, val = sets
    cfg = SegConfig(**TINY, iterations=8, checkpoint_every=0)  # 0: a checkpoint only on signal
    ref = train_segmenter(train, val, tmp_path / "ref", cfg, seed=4, progress=False)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as info:
        train_segmenter(
            train, val, run_dir, cfg, seed=4, progress=False, on_step=_signal_at(5, sig)
        )
    assert info.value.exit_code == 130 and info.value.step == 5
    assert "checkpoint saved" in str(info.value) and "resume=True" in str(info.value)
    state, meta = load_checkpoint(run_dir / "checkpoint")
    assert meta["iteration"] == state["iteration"] == 5 and meta["seed"] == 4
    assert not (run_dir / "model.json").exists()
    train_segmenter(train, val, run_dir, cfg, seed=4, progress=False, resume=True)
    assert (run_dir / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert (run_dir / "history.csv").read_text() == (ref / "history.csv").read_text()
    assert not (run_dir / "checkpoint.json").exists()  # dropped once the model is written


def test_resume_is_exact_from_periodic_checkpoints_across_epochs(sets, tmp_path):
    """Killed (here: stopped) after several periodic checkpoints, several epochs in (10
    slices, batch 4), with the best model already chosen on validation."""
    train, val = sets
    cfg = SegConfig(**TINY, iterations=12, checkpoint_every=4)
    ref = train_segmenter(train, val, tmp_path / "ref", cfg, seed=0, progress=False)

    def crash(iteration: int) -> None:
        if iteration == 10:
            raise RuntimeError("simulated crash")

    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated"):
        train_segmenter(train, val, run_dir, cfg, seed=0, progress=False, on_step=crash)
    state, meta = load_checkpoint(run_dir / "checkpoint")
    assert meta["iteration"] == 8 and state["epoch"] >= 2 and state["has_best"]
    assert [h["iteration"] for h in state["history"]] == [3, 6]
    train_segmenter(train, val, run_dir, cfg, seed=0, progress=False, resume=True)
    want = _weights(ref)
    for key, tensor in _weights(run_dir).items():
        assert torch.equal(tensor, want[key]), key
    assert load_checkpoint(run_dir / "model")[1] == load_checkpoint(ref / "model")[1]
    # the training losses after the restart match too (the selected model may predate it)
    assert (run_dir / "history.csv").read_text() == (ref / "history.csv").read_text()


def test_resume_refuses_other_settings_and_unasked_reuse(sets, tmp_path):
    train, val = sets
    cfg = SegConfig(**TINY, iterations=6, checkpoint_every=2)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train_segmenter(train, val, run_dir, cfg, seed=1, progress=False, on_step=_signal_at(3))
    cases = [
        (dict(config=SegConfig(**{**TINY, "lr": 0.5}, iterations=6)), "different lr"),
        (dict(config=SegConfig(**TINY, iterations=9)), "different iterations"),
        (dict(seed=2), "different seed"),
        (dict(train=_disks(10, 9, "T")), "different training or validation data"),
        (dict(val=None), "different training or validation data"),
        (dict(resume=False), "pass --resume"),
    ]
    for change, needle in cases:
        kwargs = dict(train=train, val=val, config=cfg, seed=1, resume=True) | change
        with pytest.raises(MrictError) as info:
            train_segmenter(
                kwargs["train"],
                kwargs["val"],
                run_dir,
                kwargs["config"],
                kwargs["seed"],
                progress=False,
                resume=kwargs["resume"],
            )
        assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)
    # harmless settings may change; the run then finishes and cannot be resumed again
    cfg2 = SegConfig(**TINY, iterations=6, checkpoint_every=5, nonfinite="skip")
    train_segmenter(train, val, run_dir, cfg2, seed=1, progress=False, resume=True)
    with pytest.raises(MrictError, match="finished run"):
        train_segmenter(train, val, run_dir, cfg, seed=1, progress=False, resume=True)
    with pytest.raises(MrictError, match="nothing to resume"):
        train_segmenter(train, val, tmp_path / "none", cfg, seed=1, progress=False, resume=True)


def test_damaged_checkpoint_is_a_one_line_error(sets, tmp_path):
    train, val = sets
    cfg = SegConfig(**TINY, iterations=4, checkpoint_every=0)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train_segmenter(train, val, run_dir, cfg, seed=0, progress=False, on_step=_signal_at(2))
    sidecar, weights = run_dir / "checkpoint.json", run_dir / "checkpoint.safetensors"
    good = sidecar.read_text(), weights.read_bytes()
    doc = json.loads(good[0])
    del doc["state"]["stale"]  # a hand-edited sidecar
    foreign = json.loads(good[0])
    foreign["meta"]["kind"] = "mrict-cyclegan"  # e.g. a train-gan checkpoint copied in
    for text, data in (
        (good[0], good[1][:-100]),  # weights cut short, e.g. a disk that filled up
        (json.dumps(doc), good[1]),
        (json.dumps(foreign), good[1]),
    ):
        sidecar.write_text(text)
        weights.write_bytes(data)
        with pytest.raises(MrictError, match="checkpoint") as info:
            train_segmenter(train, val, run_dir, cfg, seed=0, progress=False, resume=True)
        assert "\n" not in str(info.value) and not (run_dir / "model.json").exists()


def _nan_bce_at(steps: set[int], monkeypatch, bad: float = float("nan")) -> None:
    calls = [0]
    real = trainer_module.loss_terms

    def terms(loss_fn, logits, y):  # called once per training step
        calls[0] += 1
        out = real(loss_fn, logits, y)
        if calls[0] in steps:
            out["bce"] = out["bce"] * bad
        return out

    monkeypatch.setattr(trainer_module, "loss_terms", terms)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_loss_stops_naming_step_and_term_and_keeps_checkpoint(
    sets, tmp_path, monkeypatch, bad
):
    train, val = sets
    cfg = SegConfig(**TINY, iterations=10, checkpoint_every=3)
    _nan_bce_at(set(range(5, 11)), monkeypatch, bad)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as info:
        train_segmenter(train, val, run_dir, cfg, seed=0, progress=False)
    message = info.value.one_line()
    assert "step 5" in message and "'bce'" in message and "checkpoint.json" in message
    assert f"is {bad}" in message
    assert "\n" not in message and info.value.exit_code == 2
    state, meta = load_checkpoint(run_dir / "checkpoint")  # the last good one, untouched
    assert meta["iteration"] == 3
    assert all(torch.isfinite(t).all() for t in state["unet"].values() if t.is_floating_point())
    assert not (run_dir / "model.json").exists()


def test_nan_before_any_checkpoint_says_so(sets, tmp_path, monkeypatch):
    train, val = sets
    _nan_bce_at({2}, monkeypatch)
    cfg = SegConfig(**TINY, iterations=4, checkpoint_every=0)
    with pytest.raises(NonFiniteLossError, match="step 2.*no checkpoint"):
        train_segmenter(train, val, tmp_path / "run", cfg, seed=0, progress=False)


def test_nan_loss_skip_policy_drops_the_update_and_finishes(sets, tmp_path, monkeypatch):
    train, val = sets
    cfg = SegConfig(**TINY, iterations=6, checkpoint_every=5, nonfinite="skip")
    _nan_bce_at({2, 3}, monkeypatch)
    kept = tmp_path / "kept"

    def keep_checkpoint(iteration: int) -> None:  # the run deletes it once finished
        if iteration == 5:
            kept.mkdir()
            for name in ("checkpoint.json", "checkpoint.safetensors"):
                (kept / name).write_bytes((tmp_path / "run" / name).read_bytes())

    run_dir = train_segmenter(
        train, val, tmp_path / "run", cfg, seed=0, progress=False, on_step=keep_checkpoint
    )
    state, meta = load_checkpoint(run_dir / "model")
    assert meta["skipped_steps"] == 2
    # after 5 steps with 2 skipped, the optimiser has made exactly 3 updates
    ckpt, _ = load_checkpoint(kept / "checkpoint")
    assert {float(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {3.0}
    assert ckpt["skipped"] == 2 and ckpt["iteration"] == 5
    assert all(torch.isfinite(t).all() for t in state["unet"].values() if t.is_floating_point())
    losses = [float(r.split(",")[1]) for r in (run_dir / "history.csv").read_text().split()[1:]]
    assert losses and all(math.isfinite(v) for v in losses)


def test_cli_sigterm_names_the_exact_resume_command_that_works(make_dataset, tmp_path, capsys):
    data = make_dataset("png", patients=5, slices=2, size=32, modalities=("MR",))
    yaml = "\n".join(f"{k}: {list(v) if isinstance(v, tuple) else v}" for k, v in TINY.items())
    (tmp_path / "seg.yaml").write_text(yaml + "\niterations: 6\ncheckpoint_every: 0\n")
    common = ["--modality", "MR", "--seed", "2", "--label-fraction", "0.6"]
    common += ["--config", str(tmp_path / "seg.yaml")]
    assert run(["train-seg", str(data), "--out", str(tmp_path / "ref"), *common]) == 0
    run_dir = tmp_path / "run"
    argv = ["train-seg", str(data), "--out", str(run_dir), *common]
    real = trainer_module.train_segmenter

    def stopping(*args, **kwargs):
        return real(*args, **kwargs, on_step=_signal_at(3, signal.SIGTERM))

    trainer_module.train_segmenter = stopping
    try:
        assert run(argv) == 130
    finally:
        trainer_module.train_segmenter = real
    err = capsys.readouterr().err.strip().splitlines()
    assert any("SIGTERM received" in line for line in err) and err[-1].startswith("error: ")
    assert "stopped at step 3" in err[-1] and "checkpoint.json" in err[-1]
    command = shlex.split(err[-1].split("resume with: ")[1])
    assert command[:2] == ["mrict", "train-seg"] and command[-1] == "--resume"
    assert "--label-fraction" in command and "--config" not in command  # RUN/config.yaml
    assert run(argv) == 2  # without --resume the checkpoint is not silently overwritten
    assert "pass --resume" in capsys.readouterr().err
    assert run(command[1:]) == 0
    got, want = _weights(run_dir), _weights(tmp_path / "ref")
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert run(command[1:]) == 2  # a finished run is not trained again
    assert "finished run" in capsys.readouterr().err


def test_interrupted_study_continues_where_it_stopped(
    tmp_path, monkeypatch, capsys, tiny_presets, tiny_phantom
):
    """SIGINT inside the third segmenter of ``mrict study``: exit 130 with a checkpoint;
    running the same command again resumes that segmenter, keeps the finished ones and
    gives the same results as a study that was never interrupted."""
    seg = {k: v for k, v in TINY.items() if k not in ("precision", "device")}
    # the preset's iterations are replaced by --seg-iterations/--gan-iterations below
    tiny_presets(monkeypatch, seg={**seg, "val_every": 2, "checkpoint_every": 100})
    data = tiny_phantom
    study = tmp_path / "study"
    argv = ["study", str(data), "--out", str(study), "--seeds", "1", "--label-fraction", "1.0"]
    argv += ["--seg-iterations", "4", "--gan-iterations", "2", "--workers", "1"]
    real = trainer_module.train_segmenter
    calls: list[Path] = []
    first_study = [True]

    def third_is_interrupted(*args, **kwargs):
        calls.append(Path(args[2]))
        if len(calls) == 3 and first_study[0]:
            kwargs["on_step"] = _signal_at(2)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_segmenter", third_is_interrupted)
    import mrict.study.jobs as study_jobs

    monkeypatch.setattr(study_jobs, "train_segmenter", third_is_interrupted)
    assert run(argv) == 130
    err = capsys.readouterr().err
    assert "stopped at step 2" in err and "the same mrict study command" in err
    stopped = calls[2]
    assert (stopped / "checkpoint.json").is_file() and not (stopped / "model.json").exists()
    finished = {p: (p / "model.safetensors").read_bytes() for p in calls[:2]}
    calls.clear()
    first_study[0] = False
    assert run(argv) == 0, capsys.readouterr().err
    # 5 scenarios x 2 targets, less the two source-only segmenters (copies of the other
    # target's target-only run); the finished two are kept
    assert calls[0] == stopped and len(calls) == 10 - 2 - 2
    assert all((p / "model.safetensors").read_bytes() == b for p, b in finished.items())
    assert not list((study / "runs").rglob("checkpoint.*"))  # no stale U-Net checkpoint
    ref = tmp_path / "ref"
    assert run([*argv[:3], str(ref), *argv[4:], "--gan-run", str(study / "gan")]) == 0
    assert (study / "per_patient.csv").read_text() == (ref / "per_patient.csv").read_text()
