"""Stop requests (SIGINT/SIGTERM) and non-finite losses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from mrict.cli import run
from mrict.errors import MrictError
from mrict.runtime.interrupt import StopFlag, TrainingInterrupted, stop_on_signals
from mrict.runtime.numerics import LossGuard, NonFiniteLossError, nonfinite_terms


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_sets_the_flag_and_handlers_are_restored(sig, capsys):
    before = signal.getsignal(sig)
    with stop_on_signals() as stop:
        assert not stop
        os.kill(os.getpid(), sig)
        assert stop and stop.signal_name == signal.Signals(sig).name
    assert signal.getsignal(sig) is before
    assert "stopping after this step" in capsys.readouterr().err


def test_second_ctrl_c_stops_at_once():
    with pytest.raises(KeyboardInterrupt), stop_on_signals(quiet=True) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop
        os.kill(os.getpid(), signal.SIGINT)


def test_training_interrupted_is_a_one_line_exit_130(tmp_path, capsys, monkeypatch):
    exc = TrainingInterrupted(
        42, tmp_path / "checkpoint.json", "mrict train-gan D --out R --resume"
    )
    assert exc.exit_code == 130 and "\n" not in str(exc)
    assert "step 42" in str(exc) and "--resume" in str(exc) and "checkpoint.json" in str(exc)
    assert isinstance(exc, MrictError) and not StopFlag()


_LOOP = r"""
import sys, time, torch
from mrict.runtime.checkpoint import save_checkpoint
from mrict.runtime.interrupt import TrainingInterrupted, stop_on_signals
from mrict.errors import MrictError
stem = sys.argv[1]
try:
    with stop_on_signals() as stop:
        for step in range(1, 10**6):
            time.sleep(0.01)
            if step == 3:
                print("running", flush=True)
            if stop:
                save_checkpoint(stem, {"w": torch.ones(2)}, {"step": step})
                raise TrainingInterrupted(step, stem + ".json", "mrict train-gan D --resume")
except MrictError as exc:
    print(f"error: {exc.one_line()}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signalled_loop_saves_and_says_how_to_resume(tmp_path, sig):
    stem = str(tmp_path / "checkpoint")
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOOP, stem], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout.readline().strip() == b"running"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("error: ") and "resume with: mrict train-gan D --resume" in last
    from mrict.runtime.checkpoint import load_checkpoint

    assert load_checkpoint(stem)[1]["step"] >= 3


def test_cli_maps_training_interrupted_to_exit_130(monkeypatch, capsys):
    import mrict.cli as cli

    def boom(*args, **kwargs):
        raise TrainingInterrupted(5, "RUN/checkpoint.json", "mrict train-gan D --resume")

    monkeypatch.setattr(cli, "app", boom)
    assert run(["anything"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume" in err


# ----------------------------------------------------------------------------- numerics
def test_finite_losses_pass_and_bad_terms_are_named():
    losses = {"adv": torch.tensor(0.5), "cycle": torch.tensor(1.0), "lr": 2e-4}
    assert nonfinite_terms(losses) == []
    assert LossGuard().check(losses, 1)
    losses["cycle"] = torch.tensor(float("nan"))
    losses["idt"] = torch.tensor([1.0, float("inf")])
    names = [n for n, _ in nonfinite_terms(losses)]
    assert names == ["cycle", "idt"]
    assert [n for n, _ in nonfinite_terms({"x": float("-inf")})] == ["x"]


def test_stop_policy_names_step_term_and_checkpoint(tmp_path):
    guard = LossGuard("stop", checkpoint=tmp_path / "checkpoint.json")
    with pytest.raises(NonFiniteLossError) as info:
        guard.check({"adv": torch.tensor(1.0), "ssim": torch.tensor(float("nan"))}, 1234)
    text = str(info.value)
    assert "\n" not in text and "step 1234" in text and "'ssim'" in text and "nan" in text
    assert "checkpoint.json" in text and info.value.exit_code == 2


def test_skip_policy_skips_then_gives_up():
    guard = LossGuard("skip", max_consecutive_skips=2)
    nan = {"g": torch.tensor(float("nan"))}
    assert guard.check(nan, 1) is False and guard.check(nan, 2) is False
    assert guard.check({"g": torch.tensor(0.1)}, 3) is True  # resets the run of bad steps
    assert guard.check(nan, 4) is False and guard.check(nan, 5) is False
    with pytest.raises(NonFiniteLossError, match="3 bad steps in a row"):
        guard.check(nan, 6)
    assert guard.skipped == 5
    with pytest.raises(MrictError, match="unknown"):
        LossGuard("ignore")


def test_skip_policy_keeps_weights_clean_in_a_real_loop():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = LossGuard("skip")
    for step in range(6):
        x = torch.randn(4, 3)
        if step == 2:
            x[0, 0] = float("inf")
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        if not guard.check({"mse": loss}, step):
            continue
        loss.backward()
        opt.step()
    assert guard.skipped == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_any_rank_without_distributed_is_the_local_value():
    from mrict.runtime.interrupt import any_rank

    assert any_rank(True) is True and any_rank(False) is False


_RANKS = r"""
import os, sys
import torch.distributed as tdist
from mrict.runtime.interrupt import any_rank
rank = int(sys.argv[1])
tdist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
print(any_rank(rank == 1), any_rank(False), flush=True)
tdist.destroy_process_group()
"""


def test_any_rank_agrees_across_two_gloo_processes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RANKS, str(r), str(tmp_path / "rdv")],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert outs == ["True False", "True False"], outs
