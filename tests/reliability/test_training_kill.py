"""Training survives SIGKILL: ``mrict train-gan`` / ``mrict train-seg`` killed at random
moments (one kill lands while a checkpoint is being written) and restarted with
``--resume`` completes; every checkpoint left behind is readable, and no more than one
checkpoint interval of work is lost per kill."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mrict.cli import run
from mrict.runtime.checkpoint import load_checkpoint

CHECKPOINT_EVERY = 4
ITERATIONS = 40

# Runs the real CLI in a child process, reporting each finished step and each checkpoint
# write on stdout. MRICT_TEST_SLOW_SAVE=S holds a finished weights file S seconds in its
# temporary name, so a kill that follows "saving" lands in the middle of the write.
_CHILD = r"""
import os, sys, time
import mrict.runtime.checkpoint as C
import mrict.segmentation.trainer as S
import mrict.translation.trainer as T

real_save_file = C.save_file
def save_file(tensors, path):
    real_save_file(tensors, path)
    print("saving", flush=True)
    time.sleep(float(os.environ.get("MRICT_TEST_SLOW_SAVE", "0")))
C.save_file = save_file

real_train = T.train_cyclegan
def train(*args, **kwargs):
    def on_step(i):
        print(f"step {i}", flush=True)
        time.sleep(0.05)  # a floor on step time, so kills land mid-run on a fast machine
    kwargs["on_step"] = on_step
    kwargs["progress"] = False
    return real_train(*args, **kwargs)
T.train_cyclegan = train

real_seg = S.train_segmenter
def train_seg(*args, **kwargs):
    def on_step(i):
        print(f"step {i}", flush=True)
        time.sleep(0.05)
    kwargs["on_step"] = on_step
    kwargs["progress"] = False
    return real_seg(*args, **kwargs)
S.train_segmenter = train_seg

from mrict.cli import run
sys.exit(run(sys.argv[1:]))
"""

_GAN_CONFIG = f"""
image_size: 16
ngf: 4
n_blocks: 1
ndf: 4
n_layers_d: 1
batch_size: 2
iterations: {ITERATIONS}
checkpoint_every: {CHECKPOINT_EVERY}
log_every: 1
feature_loss: none
lambda_ssim: 0.0
sample_count: 1
pool_size: 2
precision: fp32
device: cpu
"""


def _env(slow: float = 0.0) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["MRICT_TEST_SLOW_SAVE"] = str(slow)
    return env


def _start(argv: list[str], slow: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(slow),
        text=True,
    )


def _read_until(proc: subprocess.Popen, stop) -> list[str]:
    """Lines of ``proc`` up to and including the first one where ``stop(line)``."""
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if stop(line.strip()):
            break
    return lines


def _steps(lines: list[str]) -> list[int]:
    return [int(x.split()[1]) for x in lines if x.startswith("step ")]


def _resume_to_end(argv: list[str]) -> tuple[list[int], str]:
    """Run ``argv --resume`` to completion (it must succeed): its printed steps, stdout."""
    proc = _start(argv + ["--resume"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return _steps(out.splitlines()), out


def _checkpoint_iteration(run_dir: Path) -> int:
    if not (run_dir / "checkpoint.json").exists():
        return 0
    state, meta = load_checkpoint(run_dir / "checkpoint")  # must always be readable
    assert int(state["iteration"]) == int(meta["iteration"])
    return int(meta["iteration"])


def _run_to_stop_point(
    argv: list[str], run_dir: Path, mode: str, rng
) -> tuple[subprocess.Popen, list[str], int]:
    """Start a training process and wait for the moment to stop it: while it writes a
    checkpoint ("during-save"; the write is slowed down) or a few steps after its last
    checkpoint. Returns the process, its output so far and the checkpoint it started from."""
    start_ckpt = _checkpoint_iteration(run_dir)
    proc = _start(argv, slow=1.0 if mode == "during-save" else 0.0)
    if mode == "during-save":
        lines = _read_until(proc, lambda s: s == "saving")
    else:
        target = start_ckpt + rng.randint(2, CHECKPOINT_EVERY + 2)
        lines = _read_until(proc, lambda s, t=target: s == f"step {t}")
        time.sleep(rng.uniform(0.0, 0.1))
    return proc, lines, start_ckpt


def test_train_gan_survives_sigkill_and_resumes(make_dataset, tmp_path):
    data = make_dataset("png", patients=3, slices=2, size=16)
    (tmp_path / "gan.yaml").write_text(_GAN_CONFIG)
    run_dir = tmp_path / "run"
    base = ["train-gan", str(data), "--out", str(run_dir), "--config", str(tmp_path / "gan.yaml")]
    rng = random.Random(11)
    plan = ["random", "during-save", "random"]
    kills, reached, resumed_from = 0, 0, []
    for attempt, mode in enumerate(plan):
        argv = base + (["--resume"] if attempt else [])
        proc, lines, start_ckpt = _run_to_stop_point(argv, run_dir, mode, rng)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        kills += 1
        steps = _steps(lines)
        assert steps, (mode, lines, proc.stderr.read())
        if attempt:
            resumed_from.append(steps[0] - 1)
        reached = max(steps)
        saved = _checkpoint_iteration(run_dir)
        # at most one checkpoint interval of finished work is lost
        assert reached - saved <= CHECKPOINT_EVERY, (reached, saved)
        assert saved >= start_ckpt
        leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(".")]
        assert all(n.endswith(".partial") for n in leftovers), leftovers
    steps, out = _resume_to_end(base)
    assert steps, f"the last run had nothing left to do: {out}"
    resumed_from.append(steps[0] - 1)
    assert steps[-1] == ITERATIONS and kills == len(plan)
    assert _checkpoint_iteration(run_dir) == ITERATIONS
    load_checkpoint(run_dir / "generators")
    # every restart picked up exactly where the last complete checkpoint was
    assert all(r % CHECKPOINT_EVERY == 0 for r in resumed_from), resumed_from
    history = np.genfromtxt(run_dir / "losses.csv", delimiter=",", names=True)
    assert np.isfinite(history["G_total"]).all()
    # and it ends exactly where an uninterrupted run with the same seed ends
    ref = tmp_path / "reference"
    proc = _start([*base[:3], str(ref), *base[4:]])  # same thread count as the killed runs
    assert proc.communicate(timeout=300)[0] and proc.returncode == 0
    got, want = load_checkpoint(run_dir / "generators")[0], load_checkpoint(ref / "generators")[0]
    for name in ("mr2ct", "ct2mr"):
        for key, tensor in want[name].items():
            assert torch.equal(got[name][key], tensor), (name, key)


SEG_ITERATIONS = 24

# augmentation and dropout on, so the data order, augmentation epoch and RNG states all
# have to be restored for the resumed run to end on the same weights
_SEG_CONFIG = f"""
image_size: 32
channels: [4, 8]
num_res_units: 1
norm: batch
augment: true
dropout: 0.1
batch_size: 4
iterations: {SEG_ITERATIONS}
val_every: 6
checkpoint_every: {CHECKPOINT_EVERY}
patience: 0
precision: fp32
device: cpu
"""


def _all_steps(proc: subprocess.Popen, lines: list[str]) -> tuple[list[int], str]:
    """Steps printed by a finished ``proc`` (``lines`` already read) and its stderr."""
    rest, err = proc.communicate(timeout=60)
    return _steps(lines + rest.splitlines()), err


def test_train_seg_survives_sigkill_and_sigint_and_resumes(make_dataset, tmp_path, capsys):
    data = make_dataset("png", patients=5, slices=2, size=32, modalities=("MR",))
    (tmp_path / "seg.yaml").write_text(_SEG_CONFIG)
    run_dir = tmp_path / "run"
    base = ["train-seg", str(data), "--modality", "MR", "--out", str(run_dir), "--seed", "3"]
    base += ["--config", str(tmp_path / "seg.yaml")]
    rng = random.Random(5)
    plan = ["random", "during-save", "sigint", "random"]
    resumed_from, checkpoints, kills = [], [], 0
    for attempt, mode in enumerate(plan):
        # a resumed run reads RUN/config.yaml; --config is only needed the first time
        argv = base + (["--resume"] if attempt else [])
        proc, lines, start_ckpt = _run_to_stop_point(argv, run_dir, mode, rng)
        proc.send_signal(signal.SIGINT if mode == "sigint" else signal.SIGKILL)
        steps, err = _all_steps(proc, lines)
        assert steps, (mode, lines, err)
        if attempt:
            resumed_from.append(steps[0] - 1)
        reached, saved = max(steps), _checkpoint_iteration(run_dir)
        if mode == "sigint":
            # a clean stop: checkpoint of the last finished step, exit 130, exact resume line
            assert proc.returncode == 130, err
            assert saved == reached, (saved, reached)
            last = err.strip().splitlines()[-1]
            assert last.startswith("error: ") and f"stopped at step {reached}" in last, err
            assert last.endswith(" ".join(base[:-2]) + " --resume"), last
        else:
            kills += 1
            assert proc.returncode == -signal.SIGKILL
            assert reached - saved <= CHECKPOINT_EVERY, (reached, saved)
        assert saved >= start_ckpt and not (run_dir / "model.json").exists()
        checkpoints.append(saved)
        leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(".")]
        assert all(n.endswith(".partial") for n in leftovers), leftovers
    steps, out = _resume_to_end(base)
    assert steps and steps[-1] == SEG_ITERATIONS, out
    resumed_from.append(steps[0] - 1)
    # every restart picked up exactly at the last complete checkpoint
    assert resumed_from == checkpoints, (resumed_from, checkpoints)
    assert kills == 3
    # a finished run keeps its model and drops the checkpoint; it cannot be resumed again
    assert (run_dir / "model.json").is_file() and not (run_dir / "checkpoint.json").exists()
    assert run(base + ["--resume"]) == 2
    assert "finished run" in capsys.readouterr().err
    # the same weights, byte for byte, as an uninterrupted run with the same seed
    ref = tmp_path / "reference"
    proc = _start([*base[:5], str(ref), *base[6:]])  # same thread count as the killed runs
    assert proc.communicate(timeout=300)[0] and proc.returncode == 0
    got, want = load_checkpoint(run_dir / "model")[0], load_checkpoint(ref / "model")[0]
    assert got["unet"].keys() == want["unet"].keys()
    for key, tensor in want["unet"].items():
        assert torch.equal(got["unet"][key], tensor), key
    assert (run_dir / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert (run_dir / "history.csv").read_text() == (ref / "history.csv").read_text()
