"""Checkpoints, atomic writes and seeding."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from mrict.errors import MrictError
from mrict.runtime.atomic import atomic_path, atomic_write_text
from mrict.runtime.checkpoint import load_checkpoint, load_module_state, save_checkpoint
from mrict.runtime.seed import rng_state, seed_everything


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.InstanceNorm2d(4), torch.nn.Conv2d(4, 1, 1)
    )


def test_checkpoint_round_trip_restores_model_optimizer_and_rng(tmp_path):
    seed_everything(3)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1, 8, 8)).mean().backward()
    opt.step()
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "rng": rng_state()}
    save_checkpoint(tmp_path / "ckpt", state, {"iteration": 7})

    loaded, meta = load_checkpoint(tmp_path / "ckpt.json")
    assert meta == {"iteration": 7}
    clone = _model()
    load_module_state(clone, loaded["model"], "model")
    for a, b in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b)
    opt2 = torch.optim.Adam(clone.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optim"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert torch.equal(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    # RNG states restore to the same streams
    random.setstate(loaded["rng"]["python"])
    np.random.set_state(loaded["rng"]["numpy"])
    torch.set_rng_state(loaded["rng"]["torch"])
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    assert first == (random.random(), np.random.rand(), torch.rand(1).item())


def test_checkpoint_detects_replaced_weights(tmp_path):
    save_checkpoint(tmp_path / "a", {"w": torch.ones(3)})
    save_checkpoint(tmp_path / "b", {"w": torch.zeros(3)})
    (tmp_path / "a.safetensors").write_bytes((tmp_path / "b.safetensors").read_bytes())
    with pytest.raises(MrictError, match="do not match"):
        load_checkpoint(tmp_path / "a")


def test_checkpoint_refuses_pickles_and_missing_files(tmp_path):
    with pytest.raises(MrictError, match="pickle"):
        load_checkpoint(tmp_path / "model.pt")
    with pytest.raises(MrictError, match="not found"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MrictError, match="not valid JSON"):
        load_checkpoint(tmp_path / "bad")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(MrictError, match="not an mrict checkpoint"):
        load_checkpoint(tmp_path / "other")


def test_load_module_state_rejects_wrong_shapes():
    a = torch.nn.Linear(4, 2)
    b = torch.nn.Linear(5, 2)
    with pytest.raises(MrictError, match="shape"):
        load_module_state(b, a.state_dict(), "G")
    with pytest.raises(MrictError, match="missing"):
        load_module_state(a, {"weight": a.weight}, "G")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_write_reports_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MrictError):
        atomic_write_text(blocker / "sub" / "out.txt", "data")


def test_seed_everything_is_reproducible():
    seed_everything(11)
    a = (random.random(), np.random.rand(), torch.rand(3))
    seed_everything(11)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
