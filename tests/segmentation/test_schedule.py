"""Training schedule: early stopping, the mixed target/extra sampler (ratio, exposure,
determinism, exact resume), the other schedules and fine-tuning from a trained run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mrict.segmentation.trainer as trainer_module
from mrict.data.datasets import SliceSet
from mrict.errors import MrictError
from mrict.runtime.checkpoint import load_checkpoint
from mrict.segmentation.config import SegConfig
from mrict.segmentation.trainer import IndexStream, batch_composition, train_segmenter
from mrict.study.scenarios import label_subset

TINY = dict(
    image_size=16,
    channels=(4, 8),
    num_res_units=1,
    batch_size=4,
    augment=False,
    val_every=2,
    patience=0,
    precision="fp32",
    device="cpu",
    schedule="mixed",
)


def tagged(n: int, base: float, prefix: str, per_patient: int = 2) -> SliceSet:
    """MR slices whose every pixel holds a unique value ``base + 0.01 * i`` (slice i) so
    that a batch tells which slices it holds; the mask is a small square."""
    images = (base + 0.01 * np.arange(n, dtype=np.float32))[:, None, None] * np.ones(
        (1, 16, 16), np.float32
    )
    masks = np.zeros((n, 16, 16), np.uint8)
    masks[:, 6:10, 6:10] = 1
    ids = [f"{prefix}{i // per_patient:02d}" for i in range(n)]
    return SliceSet("MR", images, masks, np.ones(n, bool), ids)


def decode(x: torch.Tensor, base: float) -> list[int]:
    return [int(round((float(v) - base) / 0.01)) for v in x[:, 0, 0, 0]]


@pytest.fixture
def batches(monkeypatch) -> list[torch.Tensor]:
    """Every training batch's inputs, recorded from train_step."""
    seen: list[torch.Tensor] = []
    real = trainer_module.train_step

    def spy(model, loss_fn, opt, x, *args, **kwargs):
        seen.append(x.detach().cpu().clone())
        return real(model, loss_fn, opt, x, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step", spy)
    return seen


def scripted_validation(monkeypatch, scores: list[float]) -> None:
    it = iter(scores)
    monkeypatch.setattr(trainer_module, "validation_dice", lambda *a, **k: next(it))


def test_early_stopping_after_patience_non_improving_validations(tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [0.2, 0.5, 0.4, 0.5, 0.45, 0.9, 0.9])
    cfg = SegConfig(**{**TINY, "patience": 3}, iterations=40)
    run = train_segmenter(tagged(4, 0, "T"), tagged(2, 0, "V"), tmp_path / "r", cfg, progress=False)
    _, meta = load_checkpoint(run / "model")
    history = (run / "history.csv").read_text().split()[1:]
    assert len(history) == 5  # 0.5 at the 2nd validation, then 3 without improvement
    assert meta["best_iteration"] == 4 and meta["best_val_dice"] == 0.5
    assert meta["last_iteration"] == 10 and meta["stopped_early"]


def test_early_stopping_waits_for_min_iterations_and_min_delta(tmp_path, monkeypatch):
    scores = [0.0, 0.0, 0.0, 0.0, 0.3, 0.301, 0.302, 0.303, 0.9]
    metas = []
    for k, min_iterations in enumerate((0, 12)):
        scripted_validation(monkeypatch, scores)
        cfg = SegConfig(
            **{**TINY, "patience": 3}, iterations=40, min_iterations=min_iterations, min_delta=0.01
        )
        run = train_segmenter(
            tagged(4, 0, "T"), tagged(2, 0, "V"), tmp_path / f"r{k}", cfg, progress=False
        )
        metas.append(load_checkpoint(run / "model")[1])
    # stale 3 at step 8 stops the first run; the second must reach step 12 first, then
    # +0.001 steps do not count as improvements (min_delta) though the best is selected
    assert metas[0]["last_iteration"] == 8 and metas[0]["best_iteration"] == 2
    assert metas[1]["last_iteration"] == 16 and metas[1]["best_iteration"] == 16
    assert metas[1]["best_val_dice"] == pytest.approx(0.303)


def test_mixed_sampler_ratio_and_target_exposure(tmp_path, batches):
    target, extra = tagged(6, -0.9, "T"), tagged(10, 0.2, "S")
    cfg = SegConfig(**TINY, iterations=9, real_fraction=0.5)
    run = train_segmenter(target, None, tmp_path / "mixed", cfg, extra=extra, progress=False)
    mixed = [(decode(x[:4], -0.9), decode(x[4:], 0.2)) for x in batches]
    assert len(mixed) == 9 and all(len(x) == 8 for x in batches)
    assert all(0 <= i < 6 for t, _ in mixed for i in t)  # first 4: target slices
    assert all(0 <= i < 10 for _, e in mixed for i in e)  # last 4: extra slices
    _, meta = load_checkpoint(run / "model")
    assert meta["target_draws"] == 36 and meta["extra_draws"] == 36
    assert meta["target_passes"] == pytest.approx(36 / 6)
    assert meta["batch"] == {"target": 4, "extra": 4} and meta["schedule"] == "mixed"
    # each epoch of the target stream covers every target slice once
    drawn = [i for t, _ in mixed for i in t]
    assert all(sorted(drawn[k : k + 6]) == list(range(6)) for k in range(0, 36, 6))
    # the target slices are exactly those (and in the order) a target-only run draws
    batches.clear()
    train_segmenter(target, None, tmp_path / "alone", cfg, progress=False)
    assert [decode(x, -0.9) for x in batches] == [t for t, _ in mixed]
    assert batch_composition(SegConfig(batch_size=4, real_fraction=0.25), True) == (4, 12)
    assert batch_composition(SegConfig(batch_size=4), False) == (4, 0)


def test_few_real_slices_are_still_drawn_every_batch(tmp_path, batches):
    """Label fraction 0.1 of 10 patients: one labelled patient (2 slices)."""
    target = label_subset(tagged(20, -0.9, "T"), 0.1, seed=0)
    assert target.has_mask.sum() == 2
    cfg = SegConfig(**TINY, iterations=5)
    run = train_segmenter(
        target, None, tmp_path / "r", cfg, extra=tagged(10, 0.2, "S"), progress=False
    )
    labelled = set(np.flatnonzero(target.has_mask))
    for x in batches:
        assert len(decode(x[:4], -0.9)) == 4
        assert {i for i in decode(x[:4], -0.9)} <= labelled
    _, meta = load_checkpoint(run / "model")
    assert meta["target_slices"] == 2 and meta["target_passes"] == pytest.approx(10.0)


def test_index_stream_is_deterministic_and_resumable() -> None:
    a, b = IndexStream(7, seed=3), IndexStream(7, seed=3)
    first = a.take(10)
    assert first == b.take(10)
    state = a.state()
    rest = a.take(12)
    c = IndexStream(7, seed=99)
    c.load(state)
    assert c.take(12) == rest and c.draws == a.draws == 22
    assert IndexStream(7, seed=4).take(10) != first
    with pytest.raises(MrictError, match="does not fit"):
        IndexStream(5, seed=3).load(state)


def test_mixed_run_resumes_bit_exactly(tmp_path):
    target, extra = tagged(6, -0.9, "T"), tagged(10, 0.2, "S")
    cfg = SegConfig(**{**TINY, "augment": True}, iterations=8, checkpoint_every=3)
    ref = train_segmenter(
        target, tagged(2, -0.9, "V"), tmp_path / "ref", cfg, extra=extra, progress=False
    )

    def crash(iteration: int) -> None:
        if iteration == 5:
            raise RuntimeError("simulated crash")

    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError):
        train_segmenter(
            target, tagged(2, -0.9, "V"), run_dir, cfg, extra=extra, progress=False, on_step=crash
        )
    state, _ = load_checkpoint(run_dir / "checkpoint")
    assert state["iteration"] == 3 and state["aux"]["draws"] == 12
    with pytest.raises(MrictError, match="different training"):
        train_segmenter(target, tagged(2, -0.9, "V"), run_dir, cfg, progress=False, resume=True)
    train_segmenter(
        target, tagged(2, -0.9, "V"), run_dir, cfg, extra=extra, progress=False, resume=True
    )
    assert (run_dir / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert (run_dir / "history.csv").read_text() == (ref / "history.csv").read_text()


def test_concat_and_pretrain_finetune_schedules(tmp_path, batches):
    target, extra = tagged(6, -0.9, "T"), tagged(10, 0.2, "S")
    cfg = SegConfig(**{**TINY, "schedule": "concat"}, iterations=4)
    run = train_segmenter(target, None, tmp_path / "c", cfg, extra=extra, progress=False)
    assert all(len(x) == 4 for x in batches)  # pooled: the batch keeps its size
    _, meta = load_checkpoint(run / "model")
    assert meta["target_slices"] == 16 and meta["extra_slices"] == 0
    ft = SegConfig(**{**TINY, "schedule": "pretrain_finetune"}, iterations=4)
    with pytest.raises(MrictError, match="init"):
        train_segmenter(target, None, tmp_path / "p", ft, extra=extra, progress=False)
    # fine-tuning starts from the init run's selected weights
    batches.clear()
    out = train_segmenter(target, None, tmp_path / "f", ft, init=run, progress=False)
    assert json.loads((out / "model.json").read_text())["meta"]["init"] == str(run)
    with pytest.raises(MrictError, match="differs in channels"):
        other = SegConfig(**{**TINY, "channels": (4, 16)}, iterations=2)
        train_segmenter(target, None, tmp_path / "x", other, init=run, progress=False)
    with pytest.raises(MrictError, match="mix modalities"):
        ct = SliceSet("CT", extra.images, extra.masks, extra.has_mask, extra.patient_ids)
        train_segmenter(target, None, tmp_path / "m", cfg, extra=ct, progress=False)


def test_train_seg_extra_pretrains_then_fine_tunes(make_dataset, tmp_path) -> None:
    from mrict.cli import run

    data = make_dataset("png", patients=4, slices=2, size=16, modalities=("MR",))
    extra = make_dataset(
        "png", patients=2, slices=2, size=16, modalities=("MR",), root=tmp_path / "x"
    )
    yaml = tmp_path / "seg.yaml"
    yaml.write_text("image_size: 16\nchannels: [4, 8]\nnum_res_units: 1\nbatch_size: 2\n")
    argv = ["train-seg", str(data), "--modality", "MR", "--extra", str(extra)]
    argv += ["--config", str(yaml), "--iterations", "2"]
    assert run([*argv, "--out", str(tmp_path / "pf")]) == 0
    meta = json.loads((tmp_path / "pf" / "model.json").read_text())["meta"]
    assert meta["init"] == str(tmp_path / "pf" / "pretrain") and meta["extra_slices"] == 0
    pre = json.loads((tmp_path / "pf" / "pretrain" / "model.json").read_text())["meta"]
    assert pre["target_slices"] == 4  # the pre-training saw the extra data only
    yaml.write_text(yaml.read_text() + "schedule: mixed\n")
    assert run([*argv, "--out", str(tmp_path / "mixed")]) == 0
    meta = json.loads((tmp_path / "mixed" / "model.json").read_text())["meta"]
    assert meta["schedule"] == "mixed" and meta["extra_slices"] == 4
    assert not (tmp_path / "mixed" / "pretrain").exists()
