"""A process killed at any moment of writing a checkpoint leaves a readable one: the
previous checkpoint or the new one, whole, never a mix."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import pytest

from mrict.runtime.checkpoint import load_checkpoint

_SAVER = r"""
import os, sys
import torch
from mrict.runtime.checkpoint import save_checkpoint

stem, die_at = sys.argv[1], int(sys.argv[2])
def state(v):
    return {"w": torch.full((256, 256), float(v)), "opt": {"step": v, "m": [torch.full((3,), float(v))]}}
save_checkpoint(stem, state(1), {"v": 1})
if die_at >= 0:
    calls = {"n": 0}
    real = os.replace
    def dying_replace(src, dst):
        if calls["n"] == die_at:
            os._exit(9)  # like SIGKILL: no cleanup, no finally blocks
        calls["n"] += 1
        return real(src, dst)
    os.replace = dying_replace
    save_checkpoint(stem, state(2), {"v": 2})
    sys.exit(0)
print("ready", flush=True)
v = 2
while True:
    save_checkpoint(stem, state(v), {"v": v})
    v += 1
"""


def _check(stem, allowed):
    state, meta = load_checkpoint(stem)
    v = meta["v"]
    assert v in allowed, (v, allowed)
    assert float(state["w"][0, 0]) == v and state["opt"]["step"] == v
    assert float(state["opt"]["m"][0][1]) == v
    return v


@pytest.mark.parametrize("die_at", [0, 1, 2, 3])
def test_kill_between_each_step_of_a_checkpoint_write(tmp_path, die_at):
    stem = tmp_path / "checkpoint"
    proc = subprocess.run([sys.executable, "-c", _SAVER, str(stem), str(die_at)], timeout=120)
    assert proc.returncode == 9
    # before the JSON commit the old checkpoint stands; after it the new one
    v = _check(stem, {1, 2})
    assert v == (1 if die_at <= 1 else 2)  # replace #1 is the JSON commit


def test_random_sigkills_during_repeated_checkpoint_writes(tmp_path):
    stem = tmp_path / "checkpoint"
    rng = random.Random(7)
    seen = []
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(stem), "-1"], stdout=subprocess.PIPE
        )
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(_check(stem, set(range(1, 10_000))))
    stray = [p.name for p in tmp_path.iterdir() if not p.name.startswith("checkpoint.")]
    assert all(name.endswith(".partial") for name in stray), stray
