"""Guard against numerical faults: every loss term must be finite before a step is taken.

guard = LossGuard(policy="stop")          # or "skip"
if not guard.check({"adv": l_adv, "cycle": l_cyc}, step):
    continue                              # "skip": drop this step's update
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mrict.errors import MrictError

POLICIES = ("stop", "skip")


class NonFiniteLossError(MrictError):
    """A loss term was NaN or Inf; the message names the step and the term."""

    def __init__(self, step: int, term: str, value: float, hint: str, path: str | Path | None):
        self.step, self.term, self.value = step, term, value
        super().__init__(f"loss term '{term}' is {value} at step {step}; {hint}", path)


def _as_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().sum().item())
    return float(value)


def nonfinite_terms(losses: Mapping[str, Any]) -> list[tuple[str, float]]:
    """``[(name, value), ...]`` of the terms that are not finite (tensors are summed).

    Checks all tensor terms with one device synchronisation in the common, finite case.
    """
    tensors = [
        v.detach().float().reshape(-1) for v in losses.values() if isinstance(v, torch.Tensor)
    ]
    scalars_ok = all(
        math.isfinite(float(v)) for v in losses.values() if not isinstance(v, torch.Tensor)
    )
    if scalars_ok and (not tensors or bool(torch.isfinite(torch.cat(tensors)).all())):
        return []
    bad = []
    for name, value in losses.items():
        number = _as_float(value)
        if not math.isfinite(number):
            bad.append((name, number))
    return bad


class LossGuard:
    """Check the loss terms of every step.

    ``policy="stop"`` raises :class:`NonFiniteLossError` (the caller keeps its last good
    checkpoint, which it has not overwritten); ``policy="skip"`` returns False so the caller
    drops the update, and still stops after ``max_consecutive_skips`` bad steps in a row.
    ``checkpoint`` (the last good checkpoint) is named in the message.
    """

    def __init__(
        self,
        policy: str = "stop",
        *,
        max_consecutive_skips: int = 20,
        checkpoint: str | Path | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise MrictError(f"unknown non-finite loss policy {policy!r}; use one of {POLICIES}")
        self.policy = policy
        self.max_consecutive_skips = max_consecutive_skips
        self.checkpoint = checkpoint
        self.skipped = 0
        self.consecutive = 0

    def check(self, losses: Mapping[str, Any], step: int) -> bool:
        """True when every term is finite; False to skip the step; raises to stop."""
        bad = nonfinite_terms(losses)
        if not bad:
            self.consecutive = 0
            return True
        term, value = bad[0]
        kept = (
            f"the last good checkpoint is kept ({self.checkpoint})"
            if self.checkpoint
            else "no checkpoint was written after the fault"
        )
        if self.policy == "skip":
            self.skipped += 1
            self.consecutive += 1
            if self.consecutive <= self.max_consecutive_skips:
                return False
            hint = f"{self.consecutive} bad steps in a row, stopping; {kept}"
        else:
            hint = (
                f"stopping; {kept}; lower the learning rate, use fp32, or set the "
                "non-finite policy to 'skip'"
            )
        raise NonFiniteLossError(step, term, value, hint, self.checkpoint)
