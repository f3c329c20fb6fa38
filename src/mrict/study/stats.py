"""Summary statistics: means with 95% confidence intervals and paired Wilcoxon tests."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean and two-sided Student-t confidence interval of the finite ``values``.

    ``{"mean", "lo", "hi", "n"}``; the interval is nan with fewer than two values.
    """
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(x.size)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "lo": math.nan, "hi": math.nan, "n": n}
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of ``a`` vs ``b`` paired by position (pairs with
    a non-finite value are dropped). ``p`` is nan when fewer than two non-zero differences
    remain; ``mean_diff`` and ``median_diff`` are ``a - b``."""
    pairs = [
        (x, y)
        for x, y in zip(a, b, strict=True)
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
    ]
    diff = np.asarray([x - y for x, y in pairs], dtype=float)
    out: dict[str, Any] = {
        "n": len(pairs),
        "mean_diff": float(diff.mean()) if diff.size else math.nan,
        "median_diff": float(np.median(diff)) if diff.size else math.nan,
        "statistic": math.nan,
        "p": math.nan,
    }
    if np.count_nonzero(diff) < 2:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.wilcoxon(diff, alternative="two-sided")
    out["statistic"] = float(res.statistic)
    out["p"] = float(res.pvalue)
    return out
