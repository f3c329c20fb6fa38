"""Checkpoint selection on paired validation: the lesion-carried flag, the ranking that
prefers generators which carry the tumour across, and what the trainer records."""

from __future__ import annotations

import math

import pytest
import torch

from mrict.translation import gan_step
from mrict.translation.selection import (
    CARRIED_MIN_RATIO,
    carries_tumour,
    selection_rank,
)


def _scores(score: float, mr2ct: float | None, ct2mr: float | None) -> dict:
    return {"score": score, "mr2ct_contrast_ratio": mr2ct, "ct2mr_contrast_ratio": ct2mr}


def test_carried_needs_both_directions_at_the_threshold() -> None:
    t = CARRIED_MIN_RATIO
    assert carries_tumour(_scores(0.3, t, t)) is True
    assert carries_tumour(_scores(0.3, 0.9, t - 0.01)) is False
    assert carries_tumour(_scores(0.3, -0.3, 0.9)) is False  # inverted tumour
    assert carries_tumour(_scores(0.3, None, 0.9)) is None  # no tumour to tell
    assert carries_tumour(_scores(0.3, math.nan, 0.9)) is None
    assert carries_tumour({"score": 0.3}) is None  # scored before the ratios existed


def test_rank_puts_lost_tumours_last_then_orders_by_score() -> None:
    carried, lost, unknown = (
        _scores(0.40, 0.6, 0.7),
        _scores(0.30, -0.2, 0.7),
        _scores(0.35, None, None),
    )
    order = sorted([lost, carried, unknown], key=selection_rank)
    assert order == [unknown, carried, lost]
    assert selection_rank(_scores(math.nan, 0.6, 0.7))[1] == math.inf


class _Gens(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mr2ct = torch.nn.Conv2d(1, 1, 1)
        self.ct2mr = torch.nn.Conv2d(1, 1, 1)


@pytest.mark.parametrize(
    ("sequence", "chosen"),
    [
        # the lowest score lost the tumour: the best one that carries it is kept
        ([(0.30, -0.2, 0.8), (0.50, 0.5, 0.6), (0.40, 0.4, 0.5), (0.45, 0.9, 0.9)], 3),
        # none carries it: the lowest score
        ([(0.50, -0.2, 0.8), (0.30, 0.1, 0.1), (0.40, 0.0, 0.9)], 2),
        # a later carried checkpoint replaces an earlier lost one even at a higher score
        ([(0.30, 0.1, 0.1), (0.60, 0.3, 0.3)], 2),
    ],
)
def test_select_prefers_checkpoints_that_carry_the_tumour(
    monkeypatch, tmp_path, sequence, chosen
) -> None:
    gens = _Gens()
    queue = [_scores(*s) for s in sequence]

    def fake_score(mr2ct, ct2mr, val):
        s = dict(queue.pop(0))
        s["carried"] = carries_tumour(s)
        return s

    monkeypatch.setattr(gan_step, "score_generators", fake_score)
    best = {"score": math.inf, "iteration": 0, "state": None, "history": []}
    for it in range(1, len(sequence) + 1):
        with torch.no_grad():
            gens.mr2ct.weight.fill_(float(it))  # the kept copy tells which iteration it was
        gan_step.select(best, gens, None, it, tmp_path)
    assert best["iteration"] == chosen
    assert float(best["state"]["mr2ct.weight"].flatten()[0]) == float(chosen)
    header = (tmp_path / gan_step.SELECTION_CSV).read_text().splitlines()[0].split(",")
    assert {"mr2ct_contrast_ratio", "ct2mr_contrast_ratio", "carried"} <= set(header)


def test_selection_csv_takes_rows_written_before_the_ratios(monkeypatch, tmp_path) -> None:
    """A run resumed from an older checkpoint has history rows without the new columns."""
    gens = _Gens()
    monkeypatch.setattr(
        gan_step, "score_generators", lambda *a: _scores(0.4, 0.5, 0.5) | {"carried": True}
    )
    best = {
        "score": 0.5,
        "iteration": 1,
        "state": None,
        "history": [{"iteration": 1, "score": 0.5}],
    }
    gan_step.select(best, gens, None, 2, tmp_path)
    rows = (tmp_path / gan_step.SELECTION_CSV).read_text().splitlines()
    assert rows[0].startswith("iteration,score,") and len(rows) == 3
    assert best["iteration"] == 2


@pytest.mark.parametrize("carried", [False, True, None])
def test_train_gan_warns_when_its_generators_lose_the_tumour(
    monkeypatch, capsys, tmp_path, carried
) -> None:
    import mrict.translation.translate as translate
    from mrict.commands.translation import _warn_if_tumour_lost

    sel = {"carried": carried, "mr2ct_contrast_ratio": -0.31, "ct2mr_contrast_ratio": 0.6}
    monkeypatch.setattr(translate, "read_run_meta", lambda run: {"selection": sel})
    _warn_if_tumour_lost(tmp_path / "missing")  # no run written (e.g. not rank 0): silent
    assert capsys.readouterr().err == ""
    (tmp_path / "generators.json").write_text("{}")
    _warn_if_tumour_lost(tmp_path)
    err = capsys.readouterr().err
    if carried is False:
        assert "no checkpoint of this run carries the tumour" in err
        assert "MR->CT -0.31, CT->MR 0.60" in err and "--seed" in err
    else:
        assert err == ""
