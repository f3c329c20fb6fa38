"""Study statistics: confidence intervals (Student-t and bootstrap), effect sizes, paired
tests on per-patient scores (Wilcoxon signed-rank, exact sign-flip permutation), a paired
comparison that uses the seeds, and Holm's multiple-comparison adjustment.

The unit of replication is the test patient: the patients are the independent draws from the
population the study generalises to, while the seeds of one patient are repeated measurements
of the same image (scored by models that also score every other patient). Intervals and tests
therefore resample or permute patients, on each patient's score averaged over seeds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

#: bootstrap resamples and RNG seed used by default (results are deterministic)
N_RESAMPLES = 10_000
BOOT_SEED = 0
#: largest number of patients for which every sign pattern (2**n) is enumerated
EXACT_MAX = 20

Bounds = tuple[float, float] | None
PerSeed = Mapping[Any, Mapping[str, float]]


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def _clip(x: float, bounds: Bounds) -> float:
    if bounds is None or not math.isfinite(x):
        return x
    return float(min(max(x, bounds[0]), bounds[1]))


def mean_ci(
    values: Sequence[float | None], level: float = 0.95, clip: Bounds = None
) -> dict[str, float]:
    """Mean and two-sided Student-t confidence interval of the finite ``values``, the interval
    clipped to ``clip`` (e.g. ``(0, 1)`` for Dice) when given.

    ``{"mean", "lo", "hi", "n"}``; the interval is nan with fewer than two values.
    """
    x = _finite(values)
    n = int(x.size)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    mean = _clip(float(x.mean()), clip)
    if n < 2:
        return {"mean": mean, "lo": math.nan, "hi": math.nan, "n": n}
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return {"mean": mean, "lo": _clip(mean - half, clip), "hi": _clip(mean + half, clip), "n": n}


def _mean_stat(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1)


def _dz_stat(x: np.ndarray) -> np.ndarray:
    """Cohen's d_z along the last axis: mean / SD (ddof 1); 0/0 is 0, c/0 is +-inf."""
    m = x.mean(axis=-1)
    sd = x.std(axis=-1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(sd > 0, m / np.where(sd > 0, sd, 1.0), np.sign(m) * np.inf)
    return np.where((sd == 0) & (m == 0), 0.0, d)


STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"mean": _mean_stat, "d_z": _dz_stat}


def bootstrap_ci(
    values: Sequence[float | None],
    statistic: str = "mean",
    level: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOT_SEED,
    method: str = "bca",
    clip: Bounds = None,
) -> dict[str, float]:
    """Bootstrap confidence interval of ``statistic`` (``"mean"`` or ``"d_z"``) of the finite
    ``values``, resampled with replacement ``n_resamples`` times with a fixed ``seed``.

    ``method``: ``"bca"`` (bias-corrected and accelerated; falls back to the percentile interval
    when the bias correction is undefined) or ``"percentile"``. The estimate and both ends are
    clipped to ``clip`` when given (Dice ``(0, 1)``, a difference of Dice ``(-1, 1)``); constant
    data give a zero-width interval. ``{"estimate", "lo", "hi", "n"}``; the interval is nan
    with fewer than two values (three for ``d_z``).
    """
    if method not in ("bca", "percentile"):
        raise ValueError(f"unknown bootstrap method {method!r}")
    stat = STATISTICS[statistic]
    x = _finite(values)
    n = int(x.size)
    est = float(stat(x)) if n >= (2 if statistic == "d_z" else 1) else math.nan
    out = {"estimate": _clip(est, clip), "lo": math.nan, "hi": math.nan, "n": n}
    if n < (3 if statistic == "d_z" else 2):
        return out
    rng = np.random.default_rng(seed)
    boot = stat(x[rng.integers(0, n, size=(n_resamples, n))])
    boot = boot[~np.isnan(boot)]
    alpha = (1.0 - level) / 2
    probs = np.array([alpha, 1.0 - alpha])
    if method == "bca":
        # ties (within rounding of the summation order) count half: discrete bootstraps
        with np.errstate(invalid="ignore"):
            tie = np.abs(boot - est) <= 1e-12 * max(1.0, abs(est))
        below = (np.count_nonzero((boot < est) & ~tie) + 0.5 * np.count_nonzero(tie)) / boot.size
        z0 = float(stats.norm.ppf(below)) if 0.0 < below < 1.0 else math.nan
        jack = stat(np.broadcast_to(x, (n, n))[~np.eye(n, dtype=bool)].reshape(n, n - 1))
        jack = np.clip(jack[np.isfinite(jack)], -1e300, 1e300)
        dev = jack.mean() - jack if jack.size else np.zeros(1)
        denom = 6.0 * float((dev**2).sum()) ** 1.5
        accel = float((dev**3).sum()) / denom if denom > 0 else 0.0
        if math.isfinite(z0):
            z = stats.norm.ppf(probs)
            probs = stats.norm.cdf(z0 + (z0 + z) / (1.0 - accel * (z0 + z)))
    # clip infinities (d_z of a constant resample) so the interpolation stays defined
    lo, hi = np.quantile(np.clip(boot, -1e300, 1e300), probs)
    lo, hi = (float(v) if abs(v) < 1e299 else math.copysign(math.inf, v) for v in (lo, hi))
    out["lo"], out["hi"] = _clip(lo, clip), _clip(hi, clip)
    return out


def sign_flip_test(
    diffs: Sequence[float | None],
    exact_max: int = EXACT_MAX,
    n_resamples: int = 100_000,
    seed: int = BOOT_SEED,
) -> float:
    """Two-sided one-sample sign-flip permutation p-value of the mean of ``diffs``.

    Under the null hypothesis each paired difference is symmetric about zero, so its sign is
    a fair coin independent of its size and of the other (independent) patients. ``p`` is the
    fraction of sign patterns whose ``|mean|`` reaches the observed one: exact (all ``2**n``
    patterns) for ``n <= exact_max``, else a Monte Carlo estimate ``(1 + hits) / (1 + B)``.
    nan for no finite difference.
    """
    d = _finite(diffs)
    n = int(d.size)
    if n == 0:
        return math.nan
    obs = abs(float(d.sum()))
    tol = 1e-9 * max(1.0, float(np.abs(d).sum()))
    if n <= exact_max:
        # meet in the middle: every sum of the first half plus every sum of the second half
        def sums(part: np.ndarray) -> np.ndarray:
            k = part.size
            bits = (np.arange(2**k)[:, None] >> np.arange(k)) & 1
            return (1 - 2 * bits) @ part

        half = n // 2
        total = sums(d[:half])[:, None] + sums(d[half:])[None, :]
        return float(np.count_nonzero(np.abs(total) >= obs - tol)) / 2**n
    rng = np.random.default_rng(seed)
    hits, done = 0, 0
    while done < n_resamples:
        b = min(10_000, n_resamples - done)
        signs = rng.integers(0, 2, size=(b, n)) * 2 - 1
        hits += int(np.count_nonzero(np.abs(signs @ d) >= obs - tol))
        done += b
    return (1 + hits) / (1 + n_resamples)


def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of ``a`` vs ``b`` paired by position (pairs with
    a non-finite value are dropped; zero differences are dropped, as in Wilcoxon's method).
    The p-value is exact (all sign patterns of the signed ranks, tied ranks averaged) up to
    ``EXACT_MAX`` non-zero differences, scipy's beyond. ``p`` is nan when fewer than two non-zero
    differences remain; ``mean_diff`` and ``median_diff`` are ``a - b``."""
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
    nonzero = diff[diff != 0]
    if nonzero.size < 2:
        return out
    ranks = stats.rankdata(np.abs(nonzero))
    w_plus = float(ranks[nonzero > 0].sum())
    out["statistic"] = min(w_plus, float(ranks.sum()) - w_plus)
    if nonzero.size <= EXACT_MAX:
        # the exact null distribution: every sign pattern of the signed ranks (W+ - W-)
        out["p"] = min(1.0, sign_flip_test(np.sign(nonzero) * ranks))
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.wilcoxon(nonzero, alternative="two-sided")
    out["p"] = min(1.0, float(res.pvalue))
    return out


def seed_average(per_seed: PerSeed) -> dict[str, float]:
    """Each patient's score averaged over the seeds where it is finite (nan if none)."""
    acc: dict[str, list[float]] = {}
    for scores in per_seed.values():
        for patient, v in scores.items():
            acc.setdefault(patient, [])
            if v is not None and math.isfinite(v):
                acc[patient].append(float(v))
    return {p: float(np.mean(v)) if v else math.nan for p, v in acc.items()}


def paired_test_with_seeds(
    per_seed_a: PerSeed,
    per_seed_b: PerSeed,
    level: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOT_SEED,
) -> dict[str, Any]:
    """Paired comparison of scenario ``a`` with ``b`` from ``{seed: {patient: score}}`` dicts.

    Two-level analysis. The patient is the unit: each patient's difference ``a - b`` of its
    scores averaged over seeds is the quantity with independent replicates (patients are
    independent draws; the seeds of one patient are not). On these ``n`` differences:

    - ``p``: two-sided Wilcoxon signed-rank test (exact when small), ``statistic`` its W;
    - ``p_signflip``: exact two-sided sign-flip permutation test of the mean difference;
    - ``mean_diff`` with a bootstrap (BCa) CI over patients, clipped to [-1, 1];
      ``d_z`` (Cohen's d_z: mean / SD of the differences) with a bootstrap CI.

    The seeds are used, not pooled away: for every seed present in both, the per-patient
    difference of that seed's models gives ``seed_mean_diffs`` (mean over patients),
    ``seed_sd`` (their SD across seeds: the training noise of the comparison),
    ``seeds_a_better`` (fraction of seeds with a positive mean difference) and
    ``p_every_seed``: an intersection-union test of "a differs from b, in the same direction,
    in every seed" (the largest per-seed Wilcoxon p when all seeds agree in sign, else 1).
    It is valid under any dependence between seeds, unlike Fisher's or Stouffer's combination
    of per-seed p-values, which assume independent experiments while every seed scores the
    same patients (and so is anti-conservative here).
    """
    ma, mb = seed_average(per_seed_a), seed_average(per_seed_b)
    common = sorted(p for p in set(ma) & set(mb) if math.isfinite(ma[p]) and math.isfinite(mb[p]))
    diffs = np.asarray([ma[p] - mb[p] for p in common], dtype=float)
    out = paired_wilcoxon([ma[p] for p in common], [mb[p] for p in common])
    ci = bootstrap_ci(diffs, "mean", level, n_resamples, seed, clip=(-1.0, 1.0))
    dz = bootstrap_ci(diffs, "d_z", level, n_resamples, seed)
    out.update(
        p_signflip=sign_flip_test(diffs),
        diff_ci_lo=ci["lo"],
        diff_ci_hi=ci["hi"],
        d_z=dz["estimate"],
        d_z_ci_lo=dz["lo"],
        d_z_ci_hi=dz["hi"],
    )
    seed_diffs: dict[Any, float] = {}
    seed_p: dict[Any, float] = {}
    for s in sorted(set(per_seed_a) & set(per_seed_b)):
        sa, sb = per_seed_a[s], per_seed_b[s]
        pts = sorted(set(sa) & set(sb))
        res = paired_wilcoxon([sa[p] for p in pts], [sb[p] for p in pts])
        if res["n"]:
            seed_diffs[s], seed_p[s] = res["mean_diff"], res["p"]
    sd = np.asarray(list(seed_diffs.values()), dtype=float)
    signs = {float(np.sign(v)) for v in sd}
    ps = list(seed_p.values())
    if not ps or any(math.isnan(p) for p in ps):
        p_every = math.nan
    else:
        p_every = max(ps) if len(signs) == 1 and 0.0 not in signs else 1.0
    out.update(
        n_seeds=len(seed_diffs),
        seed_mean_diffs=seed_diffs,
        seed_p=seed_p,
        seed_sd=float(sd.std(ddof=1)) if sd.size >= 2 else math.nan,
        seeds_a_better=float(np.mean(sd > 0)) if sd.size else math.nan,
        p_every_seed=p_every,
    )
    return out


def holm(pvalues: Sequence[float | None]) -> list[float]:
    """Holm step-down adjusted p-values (same order; nan stays nan and is not counted)."""
    finite = {i: float(p) for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)}
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(finite, key=finite.__getitem__)):
        running = max(running, min(1.0, (len(finite) - rank) * finite[i]))
        out[i] = running
    return out
