"""Patient-level train/val/test splits and the guard against leakage."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from mrict.errors import MrictError


def split_patients(
    patient_ids: Iterable[str],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[str, list[str]]:
    """Split unique patient ids into train/val/test by ``fractions`` with ``seed``.

    Every split gets at least one patient when there are three or more; with fewer the
    test and then the validation split stay empty. The result passes
    :func:`check_disjoint`.
    """
    if any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise MrictError(f"invalid split fractions {fractions}")
    ids = sorted(set(patient_ids))
    n = len(ids)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    total = sum(fractions)
    n_val = round(n * fractions[1] / total)
    n_test = round(n * fractions[2] / total)
    if n >= 3:
        n_val = max(n_val, 1) if fractions[1] > 0 else 0
        n_test = max(n_test, 1) if fractions[2] > 0 else 0
    else:
        n_val, n_test = 0, 0
    n_train = n - n_val - n_test
    splits = {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }
    check_disjoint(splits)
    return splits


def check_disjoint(splits: Mapping[str, Iterable[str]]) -> None:
    """Refuse any patient that appears in two splits (:class:`MrictError` naming it)."""
    seen: dict[str, str] = {}
    for name, patients in splits.items():
        for patient in patients:
            if patient in seen and seen[patient] != name:
                raise MrictError(
                    f"patient {patient!r} appears in both the {seen[patient]} and {name} splits; "
                    "splits must be by patient"
                )
            seen[patient] = name
