"""Numerical faults and graceful stops in the CycleGAN trainer."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from mrict.runtime.checkpoint import load_checkpoint
from mrict.runtime.interrupt import TrainingInterrupted
from mrict.runtime.numerics import NonFiniteLossError
from mrict.translation import trainer as trainer_module
from mrict.translation.trainer import train_cyclegan

from .test_training import tiny_config


@pytest.fixture
def data(make_dataset) -> Path:
    return make_dataset("png", patients=4, slices=2, size=32)


def _nan_cycle_from(step_to_fail: int, monkeypatch) -> list[int]:
    calls = [0]
    real = trainer_module.l1_loss

    def l1(a, b):
        calls[0] += 1
        value = real(a, b)
        # two cycle L1 terms per step when identity is off
        return value * float("nan") if calls[0] > 2 * (step_to_fail - 1) else value

    monkeypatch.setattr(trainer_module, "l1_loss", l1)
    return calls


def test_nan_loss_stops_naming_step_and_term_and_keeps_checkpoint(data, tmp_path, monkeypatch):
    cfg = tiny_config(iterations=6, checkpoint_every=2, lambda_identity=0.0)
    _nan_cycle_from(4, monkeypatch)
    with pytest.raises(NonFiniteLossError) as info:
        train_cyclegan(data, tmp_path / "run", cfg, progress=False)
    message = info.value.one_line()
    assert "step 4" in message and "cycle_mr" in message and "checkpoint" in message
    # the last good checkpoint (iteration 2) is intact and has no NaN weights
    state, meta = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert meta["iteration"] == 2
    assert all(torch.isfinite(t).all() for t in state["generators"].values())
    assert not (tmp_path / "run" / "generators.json").exists()


def test_nan_loss_skip_policy_drops_updates_and_finishes(data, tmp_path, monkeypatch):
    cfg = tiny_config(iterations=5, checkpoint_every=0, lambda_identity=0.0, nonfinite="skip")
    calls = [0]
    real = trainer_module.l1_loss

    def l1(a, b):  # only step 3's cycle terms are NaN
        calls[0] += 1
        value = real(a, b)
        return value * float("nan") if calls[0] in (5, 6) else value

    monkeypatch.setattr(trainer_module, "l1_loss", l1)
    run = train_cyclegan(data, tmp_path / "run", cfg, progress=False)
    state, meta = load_checkpoint(run / "checkpoint")
    assert meta["iteration"] == 5
    assert all(torch.isfinite(t).all() for t in state["generators"].values())


def test_sigint_saves_checkpoint_and_says_how_to_resume(data, tmp_path):
    cfg = tiny_config(iterations=8, checkpoint_every=100)

    def on_step(iteration: int) -> None:
        if iteration == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as info:
        train_cyclegan(data, tmp_path / "run", cfg, progress=False, on_step=on_step)
    assert info.value.exit_code == 130
    assert "--resume" in info.value.one_line() and "step 3" in info.value.one_line()
    _, meta = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert meta["iteration"] == 3
    # the previous SIGINT handler is restored
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    run = train_cyclegan(data, tmp_path / "run", cfg, progress=False, resume=True)
    _, meta = load_checkpoint(run / "checkpoint")
    assert meta["iteration"] == 8
