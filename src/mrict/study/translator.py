"""The study's CycleGAN: trained on the train split (or reused), then checked on the paired
validation set for whether it carries the tumour across, and retrained with the next seed
when it does not.

Why: with the study's configuration (source masks only) some seeds train a translator
whose translated tumour is invisible or inverted (on the built-in data set two of five
seeds; a real-target U-Net then finds almost nothing on its translations), and every
translated scenario of the study inherits that. The check uses only ``DATA/paired_val``
(:mod:`mrict.translation.selection`), never the test set: the translator's selected
generators must keep, in both directions, at least
:data:`~mrict.translation.selection.CARRIED_MIN_RATIO` of the real tumour-to-brain
contrast. Attempt ``k`` (0-based) trains with seed ``seed + k`` into ``gan/`` (k = 0) or
``gan_seed<seed + k>/``; a study that is run again finds the same folders and reuses them.
When every attempt fails, the study goes on with the best-ranked one and says so.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from mrict.config import resolve_config
from mrict.errors import MrictError

#: the study's translator learns from each direction's source masks only, so scenarios
#: (2), (3) and (5) see no target label, not even through the translator, and the label
#: fractions of (1) and (4) are the only target labels used (override with
#: ``gan_overrides={"use_target_masks": True}``)
STUDY_GAN_DEFAULTS: dict[str, Any] = {"use_target_masks": False}
#: translators trained at most, per study, until one carries the tumour across
DEFAULT_TRANSLATOR_TRIES = 3


def log(msg: str) -> None:
    """One line of study progress on stderr."""
    print(msg, file=sys.stderr, flush=True)


def attempt_dir(out: Path, seed: int, k: int) -> Path:
    """Folder of attempt ``k`` of a study in ``out`` whose translator seed is ``seed``."""
    return out / "gan" if k == 0 else out / f"gan_seed{seed + k}"


def attempt_record(run: Path, meta: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """What the study keeps of one translator: folder, seed, selected iteration and score,
    the two tumour contrast ratios and ``carried`` (None: not checked, e.g. no
    ``DATA/paired_val`` or generators written before the check existed)."""
    sel = meta.get("selection") or {}
    return {
        "run": str(run),
        "seed": seed,
        "checked_on": sel.get("on"),
        "iteration": sel.get("iteration"),
        "score": sel.get("score"),
        "mr2ct_contrast_ratio": sel.get("mr2ct_contrast_ratio"),
        "ct2mr_contrast_ratio": sel.get("ct2mr_contrast_ratio"),
        "carried": sel.get("carried"),
    }


def study_translator(
    data: Path,
    out: Path,
    preset: str,
    gan_run: Path | None,
    seed: int,
    progress: bool,
    gan_overrides: dict[str, Any] | None,
    tries: int = DEFAULT_TRANSLATOR_TRIES,
) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The study's translator folder, its metadata and the check's record
    ``{"tries": N, "attempts": [attempt_record, ...], "chosen": index, "carried": bool |
    None}``. ``gan_run`` given: that run, checked but never retrained."""
    from mrict.translation.config import GAN_PRESETS, GanConfig
    from mrict.translation.selection import CARRIED_MIN_RATIO, ratios_text
    from mrict.translation.trainer import train_cyclegan
    from mrict.translation.translate import read_run_meta

    if tries < 1:
        raise MrictError("--translator-tries must be at least 1")
    need = f"at least {CARRIED_MIN_RATIO:g} in both directions"
    if gan_run is not None:
        meta = read_run_meta(gan_run)
        rec = attempt_record(gan_run, meta, (meta.get("config") or {}).get("seed"))
        if rec["carried"] is False:
            log(
                f"warning: the given CycleGAN run does not carry the tumour across on "
                f"paired_val ({ratios_text(rec)}; {need}); the translated scenarios rest on it"
            )
        return (
            gan_run,
            meta,
            {"tries": 1, "attempts": [rec], "chosen": 0, "carried": rec["carried"]},
        )

    attempts: list[dict[str, Any]] = []
    metas: list[dict[str, Any]] = []
    for k in range(tries):
        run_seed = seed + k
        gan_dir = attempt_dir(out, seed, k)
        if not (gan_dir / "generators.json").is_file():
            overrides = {**STUDY_GAN_DEFAULTS, **(gan_overrides or {}), "seed": run_seed}
            cfg = resolve_config(GanConfig, GAN_PRESETS, preset, None, overrides)
            log(f"training the CycleGAN ({preset} preset, seed {run_seed}) -> {gan_dir}")
            train_cyclegan(
                data,
                gan_dir,
                cfg,
                resume=(gan_dir / "checkpoint.json").is_file(),
                progress=progress,
            )
        meta = read_run_meta(gan_dir)
        rec = attempt_record(gan_dir, meta, run_seed)
        attempts.append(rec)
        metas.append(meta)
        if rec["carried"] is None:
            why = (
                "no paired validation set (DATA/paired_val)"
                if rec["checked_on"] is None
                else "no tumour in the paired validation set (DATA/paired_val/mask)"
            )
            log(f"{why}: whether the translator carries the tumour across is not checked")
        if rec["carried"] is not False:
            break
        more = k + 1 < tries
        log(
            f"the CycleGAN trained with seed {run_seed} does not carry the tumour across on "
            f"paired_val ({ratios_text(rec)}; {need})"
            + (f"; training another with seed {run_seed + 1}" if more else "")
        )
    ok = [i for i, r in enumerate(attempts) if r["carried"] is not False]
    if ok:
        chosen = ok[0]
    else:
        scores = [r["score"] if r["score"] is not None else math.inf for r in attempts]
        chosen = min(range(len(attempts)), key=scores.__getitem__)
        log(
            f"warning: none of the {len(attempts)} CycleGANs carries the tumour across on "
            f"paired_val; the study goes on with seed {attempts[chosen]['seed']} (lowest "
            "selection score), and its translated scenarios (3)-(5) rest on a translator that "
            "loses the tumour"
        )
    check = {
        "tries": tries,
        "attempts": attempts,
        "chosen": chosen,
        "carried": attempts[chosen]["carried"],
    }
    return Path(attempts[chosen]["run"]), metas[chosen], check
