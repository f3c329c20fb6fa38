"""A missing piece fails loudly: never an ImportError turned into a report that looks complete."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


def test_study_translation_metrics_do_not_swallow_import_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mrict.study.run import _translation_metrics

    monkeypatch.setitem(sys.modules, "mrict.translation.evaluate", None)
    with pytest.raises(ImportError):
        _translation_metrics(tmp_path / "gan", tmp_path / "data")


def test_training_log_needs_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mrict.translation.train_log import TrainLog

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError):
        TrainLog(tmp_path, 0, enabled=True)
