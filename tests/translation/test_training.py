"""Training loop: outputs, checkpoints, exact resume, refusal of bad resumes, DDP on gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mrict.errors import MrictError
from mrict.runtime.checkpoint import load_checkpoint
from mrict.translation.config import GanConfig
from mrict.translation.trainer import LOSS_NAMES, train_cyclegan
from mrict.translation.translate import load_generators


def tiny_config(**kw) -> GanConfig:
    base = dict(
        image_size=32,
        ngf=4,
        n_blocks=1,
        ndf=4,
        batch_size=2,
        iterations=6,
        checkpoint_every=2,
        log_every=1,
        sample_count=2,
        precision="fp32",
        pool_size=3,
        device="cpu",
    )
    base.update(kw)
    return GanConfig(**base)


@pytest.fixture
def data(make_dataset) -> Path:
    # 4 patients per modality -> 2 train patients x 2 slices
    return make_dataset("png", patients=4, slices=2, size=32)


class Interrupt(Exception):
    pass


def test_training_writes_every_output(data: Path, tmp_path: Path) -> None:
    run = train_cyclegan(data, tmp_path / "run", tiny_config(), progress=False)
    for name in (
        "config.yaml",
        "checkpoint.json",
        "checkpoint.safetensors",
        "generators.json",
        "generators.safetensors",
        "losses.csv",
        "samples_epoch_001.png",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    rows = (run / "losses.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert all(k in header for k in LOSS_NAMES) and len(rows) == 1 + 6
    last = dict(zip(header, rows[-1].split(","), strict=True))
    for k in ("cycle_mr", "identity_ct", "ssim_mr", "feature_mr2ct", "D_ct"):
        assert float(last[k]) > 0, k
    assert yaml.safe_load((run / "config.yaml").read_text())["ngf"] == 4
    # the checkpoint holds everything needed to continue
    state, meta = load_checkpoint(run / "checkpoint")
    assert meta["iteration"] == 6 and meta["config"]["n_blocks"] == 1
    assert {
        "generators",
        "discriminators",
        "opt_g",
        "opt_d",
        "sched_g",
        "sched_d",
        "pools",
        "rng",
    } <= set(state)
    assert state["pools"][0]["mr"]["images"].shape[0] == 3
    # the final generators load for inference and equal the checkpoint's
    gens = load_generators(run)
    for key, g in gens.items():
        for name, t in g.state_dict().items():
            assert torch.equal(t, state["generators"][f"{key}.{name}"])
    assert gens["mr2ct"].image_size == 32
    meta_g = json.loads((run / "generators.json").read_text())["meta"]
    assert len(meta_g["histograms"]["CT"]) > 100


def test_interrupted_then_resumed_equals_uninterrupted(data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(iterations=7, checkpoint_every=3, lambda_identity=0.5)
    full = train_cyclegan(data, tmp_path / "full", cfg, progress=False)

    def crash(it: int) -> None:
        if it == 5:  # killed after step 5; the last checkpoint is step 3
            raise Interrupt

    with pytest.raises(Interrupt):
        train_cyclegan(data, tmp_path / "cut", cfg, progress=False, on_step=crash)
    assert not (tmp_path / "cut" / "generators.json").exists()
    state, meta = load_checkpoint(tmp_path / "cut" / "checkpoint")
    assert meta["iteration"] == 3
    # an unfinished run still translates, with its latest checkpoint's generators
    partial = load_generators(tmp_path / "cut")
    for name, t in partial["ct2mr"].state_dict().items():
        assert torch.equal(t, state["generators"][f"ct2mr.{name}"])
    resumed = train_cyclegan(data, tmp_path / "cut", cfg, resume=True, progress=False)
    a = load_file(str(full / "checkpoint.safetensors"))
    b = load_file(str(resumed / "checkpoint.safetensors"))
    nets = [k for k in a if k.startswith(("generators/", "discriminators/", "opt_g/", "pools/"))]
    assert nets
    for k in nets:
        assert torch.equal(a[k], b[k]), k
    rows = (resumed / "losses.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(1, 8)]


def test_resume_refusals(data: Path, tmp_path: Path) -> None:
    with pytest.raises(MrictError, match="nothing to resume"):
        train_cyclegan(data, tmp_path / "none", tiny_config(), resume=True, progress=False)
    run = train_cyclegan(data, tmp_path / "run", tiny_config(iterations=2), progress=False)
    with pytest.raises(MrictError, match="already holds a checkpoint"):
        train_cyclegan(data, run, tiny_config(iterations=2), progress=False)
    with pytest.raises(MrictError, match="ngf"):
        train_cyclegan(data, run, tiny_config(iterations=4, ngf=8), resume=True, progress=False)
    # a longer schedule may be resumed
    train_cyclegan(data, run, tiny_config(iterations=3), resume=True, progress=False)
    assert load_checkpoint(run / "checkpoint")[1]["iteration"] == 3


def test_bad_config_and_data(tmp_path: Path, data: Path) -> None:
    with pytest.raises(MrictError, match="multiple of 4"):
        train_cyclegan(data, tmp_path / "r", tiny_config(image_size=30))
    with pytest.raises(MrictError, match="not found"):
        train_cyclegan(tmp_path / "absent", tmp_path / "r", tiny_config())
    with pytest.raises(MrictError, match="needs a local weights file"):
        train_cyclegan(data, tmp_path / "r2", tiny_config(feature_loss="vgg16"), progress=False)


def test_ddp_two_processes_on_gloo(data: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**tiny_config().__dict__, "iterations": 3, "batch_size": 1}))
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "mrict.cli",
        "train-gan",
        str(data),
        "--out",
        str(run),
        "--config",
        str(cfg),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state, meta = load_checkpoint(run / "checkpoint")
    assert meta["world_size"] == 2 and len(state["pools"]) == 2
    # the two ranks drew different samples, so their pools differ
    assert not torch.equal(state["pools"][0]["mr"]["images"], state["pools"][1]["mr"]["images"])
    # only rank 0 writes: one TensorBoard file, one line per logged step
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert len((run / "losses.csv").read_text().splitlines()) == 1 + 3
    assert proc.stdout.count("trained generators") == 1
    assert json.loads((run / "generators.json").read_text())["meta"]["world_size"] == 2
