"""The study's translator check: retrain with the next seed while the translator loses the
tumour on paired validation, reuse earlier attempts, and say what was used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mrict.errors import MrictError
from mrict.report.html import translator_check_note
from mrict.study import translator as T

LOST = {"mr2ct_contrast_ratio": -0.3, "ct2mr_contrast_ratio": 0.1, "carried": False}
KEPT = {"mr2ct_contrast_ratio": 0.6, "ct2mr_contrast_ratio": 0.7, "carried": True}


def _fake_training(monkeypatch, outcome: dict[int, dict[str, Any]], score: dict[int, float]):
    """Training writes generators.json holding the outcome scripted for its seed; returns
    the list of seeds trained."""
    import mrict.translation.trainer as trainer
    import mrict.translation.translate as translate

    trained: list[int] = []

    def train(data, run_dir: Path, cfg, resume=False, progress=True):
        trained.append(cfg.seed)
        assert cfg.use_target_masks is False  # the study's default
        run_dir.mkdir(parents=True)
        sel = {"on": "paired_val", "iteration": 400, "score": score[cfg.seed], **outcome[cfg.seed]}
        (run_dir / "generators.json").write_text(
            json.dumps({"config": {"seed": cfg.seed}, "selection": sel})
        )
        return run_dir

    monkeypatch.setattr(trainer, "train_cyclegan", train)
    monkeypatch.setattr(
        translate, "read_run_meta", lambda d: json.loads((Path(d) / "generators.json").read_text())
    )
    return trained


def _translator(tmp_path: Path, seed: int = 1, tries: int = 3, gan_run: Path | None = None):
    return T.study_translator(
        tmp_path / "data", tmp_path / "study", "quick", gan_run, seed, False, None, tries
    )


def test_a_translator_that_loses_the_tumour_is_retrained_with_the_next_seed(
    tmp_path, monkeypatch, capsys
) -> None:
    trained = _fake_training(monkeypatch, {1: LOST, 2: KEPT, 3: KEPT}, {1: 0.5, 2: 0.38, 3: 0.3})
    run, meta, check = _translator(tmp_path)
    assert trained == [1, 2]  # stops at the first that carries the tumour
    assert run == tmp_path / "study" / "gan_seed2" and meta["config"]["seed"] == 2
    assert check["chosen"] == 1 and check["carried"] is True
    assert [a["seed"] for a in check["attempts"]] == [1, 2]
    assert [a["carried"] for a in check["attempts"]] == [False, True]
    err = capsys.readouterr().err
    assert "seed 1 does not carry the tumour" in err and "training another with seed 2" in err
    # run again: both folders are reused, nothing is trained
    again = _translator(tmp_path)
    assert trained == [1, 2] and again[0] == run and again[2] == check


def test_when_every_attempt_loses_the_tumour_the_lowest_score_is_used_and_flagged(
    tmp_path, monkeypatch, capsys
) -> None:
    trained = _fake_training(monkeypatch, {4: LOST, 5: LOST}, {4: 0.52, 5: 0.49})
    run, _, check = _translator(tmp_path, seed=4, tries=2)
    assert trained == [4, 5] and run.name == "gan_seed5"
    assert check["carried"] is False and check["chosen"] == 1
    assert "none of the 2 CycleGANs carries the tumour" in capsys.readouterr().err
    note = translator_check_note({"translator_check": check})
    assert "loses the tumour (used)" in note and "No attempt carried the tumour" in note


def test_an_unchecked_translator_is_used_as_it_is(tmp_path, monkeypatch, capsys) -> None:
    """No paired validation set: nothing to check, one attempt, and the log says so."""
    unchecked = {"on": None, "mr2ct_contrast_ratio": None, "ct2mr_contrast_ratio": None}
    trained = _fake_training(monkeypatch, {0: unchecked | {"carried": None}}, {0: None})
    run, _, check = _translator(tmp_path, seed=0)
    assert trained == [0] and run.name == "gan" and check["carried"] is None
    assert "not checked" in capsys.readouterr().err
    assert "not checked (used)" in translator_check_note({"translator_check": check})


def test_a_validation_set_without_tumour_cannot_check(tmp_path, monkeypatch, capsys) -> None:
    no_tumour = {"mr2ct_contrast_ratio": None, "ct2mr_contrast_ratio": None, "carried": None}
    trained = _fake_training(monkeypatch, {3: no_tumour}, {3: 0.4})
    _, _, check = _translator(tmp_path, seed=3)
    assert trained == [3] and check["carried"] is None
    assert "no tumour in the paired validation set" in capsys.readouterr().err


def test_a_given_run_is_checked_but_never_retrained(tmp_path, monkeypatch, capsys) -> None:
    trained = _fake_training(monkeypatch, {7: LOST}, {7: 0.5})
    import mrict.translation.trainer as trainer

    given = tmp_path / "mine"
    trainer.train_cyclegan(None, given, type("C", (), {"seed": 7, "use_target_masks": False}))
    trained.clear()
    run, _, check = _translator(tmp_path, gan_run=given)
    assert run == given and trained == [] and check["carried"] is False
    assert "the given CycleGAN run does not carry the tumour" in capsys.readouterr().err


def test_tries_must_be_positive(tmp_path) -> None:
    with pytest.raises(MrictError, match="at least 1"):
        _translator(tmp_path, tries=0)


def test_reports_of_older_studies_have_no_check_note() -> None:
    assert translator_check_note({}) == ""
