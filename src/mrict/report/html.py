"""The study report: one self-contained HTML page (figures embedded as base64 PNG).

The page layout is the jinja2 template ``templates/report.html.j2`` (package data); the
helpers here build its tables and sentences as already-escaped HTML."""

from __future__ import annotations

import base64
import functools
import html
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from mrict.runtime.atomic import atomic_write_text
from mrict.study.scenarios import REGISTRY, SCENARIOS

SCENARIO_NAMES = dict(SCENARIOS)  # the scenario registry's labels
ALPHA = 0.05


def _e(x: Any) -> str:
    return html.escape(str(x))


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ci(row: Mapping[str, Any], metric: str, kind: str, digits: int = 3) -> str:
    lo, hi = row.get(f"{metric}_ci_{kind}_lo"), row.get(f"{metric}_ci_{kind}_hi")
    if lo is None or hi is None:
        return "n/a"
    return f"[{_f(lo, digits)}, {_f(hi, digits)}]"


def _table(header: list[str], rows: list[list[Any]], left: int = 1) -> str:
    th = "".join(
        f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i < left else ""}">{_e(c)}</td>' for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def _png_base64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _scenario(row: Mapping[str, Any]) -> str:
    name = SCENARIO_NAMES.get(row["scenario"], row["scenario"])
    f = row.get("label_fraction") or 0.0
    return f"{name}, {f:.0%} of target labels" if f else name


def _mean(summary: list[dict[str, Any]], target: str, scenario: str, f: float) -> float | None:
    for r in summary:
        if (r["target"], r["scenario"], r["label_fraction"]) == (target, scenario, f):
            return r.get("dice_mean")
    return None


def _verdict(test: Mapping[str, Any]) -> str:
    """Significance only when the Holm-adjusted p (where the study computed it) is below
    ALPHA; the raw Wilcoxon p and whether every seed agrees are always stated."""
    p = test.get("p")
    if p is None:
        return "the paired test could not be computed (fewer than two non-zero differences)"
    holm = test.get("p_holm")
    direction = "higher" if test["mean_diff"] > 0 else "lower"
    if holm is None:
        if p < ALPHA:
            return f"significantly {direction} (Wilcoxon p = {p:.3g} &lt; {ALPHA})"
        return f"no significant difference (Wilcoxon p = {p:.3g})"
    every = test.get("p_every_seed")
    seeds = ""
    if every is not None:
        seeds = "; in every seed" if every < ALPHA else "; not in every seed separately"
    stats = f"Wilcoxon p = {p:.3g}, Holm-adjusted {holm:.3g}{seeds}"
    if holm < ALPHA:
        return f"significantly {direction} ({stats})"
    if p < ALPHA:
        return f"{direction}, but not significant after the Holm adjustment ({stats})"
    return f"no significant difference ({stats})"


def conclusion(doc: Mapping[str, Any]) -> list[str]:
    """Sentences that state only what the numbers show (significance only when p < 0.05)."""
    summary, tests = doc["summary"], doc["tests"]
    out: list[str] = []
    for target in sorted({r["target"] for r in summary}):
        source = "MR" if target == "CT" else "CT"
        fmax = max((r["label_fraction"] for r in summary if r["target"] == target), default=1.0)
        base = _mean(summary, target, "target_only", fmax)
        src = _mean(summary, target, "source_only", 0.0)
        tr = _mean(summary, target, "translated", 0.0)
        name = _e(target)  # the sentences are HTML
        parts = [f"<b>Target {name}.</b>"]
        if base is not None and src is not None:
            parts.append(
                f"Trained on {name} ({fmax:.0%} of labels), the segmenter reaches a mean Dice of "
                f"{_f(base)}; trained on {source} only it reaches {_f(src)} on the same {name} "
                f"test patients (domain-shift gap {_f(base - src)})."
            )
        for t in tests:
            if t["target"] != target:
                continue
            if t["a"] == "translated" and tr is not None and src is not None:
                parts.append(
                    f"Training on {source} images translated to {name} (no {name} labels) gives "
                    f"{_f(tr)} vs {_f(src)} for untranslated {source}: {_verdict(t)}."
                )
            elif t["a"] == "self_training" and t["b"] == "translated":
                a = _mean(summary, target, "self_training", 0.0)
                parts.append(
                    f"Self-training on pseudo-labelled {name} slices (no {name} labels) gives "
                    f"{_f(a)} vs {_f(tr)} for translated {source} alone: {_verdict(t)}."
                )
            elif t["a"] == "target_translated":
                f = t["label_fraction"]
                a = _mean(summary, target, "target_translated", f)
                b = _mean(summary, target, "target_only", f)
                parts.append(
                    f"With {f:.0%} of the {name} labels, adding translated {source} gives "
                    f"{_f(a)} vs {_f(b)} without: {_verdict(t)}."
                )
        out.append(" ".join(parts))
    n = min((t["n"] for t in tests), default=0)
    if 0 < n < 6:
        out.append(
            f"With only {n} paired test patients the two-sided Wilcoxon test cannot reach "
            f"p &lt; 0.05 (its smallest attainable p is {2 / 2**n:.3g}); more test patients are "
            "needed for a conclusive comparison."
        )
    return out


def _name(key: str) -> str:
    if key in SCENARIO_NAMES:
        return SCENARIO_NAMES[key]
    from mrict.study.scenarios import SCENARIOS

    return SCENARIOS.get(key, key)


def _est_ci(est: Any, lo: Any, hi: Any, digits: int = 3) -> str:
    if est is None:
        return "n/a"
    if lo is None or hi is None:
        return _f(est, digits)
    return f"{_f(est, digits)} [{_f(lo, digits)}, {_f(hi, digits)}]"


def _p(p: Any) -> str:
    if p is None or (isinstance(p, float) and not math.isfinite(p)):
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def results_table(summary: list[Mapping[str, Any]], info: Mapping[str, Any]) -> str:
    """The results section: for every scenario, Dice on the real target test patients (mean,
    patient and seed intervals) next to its validation Dice and the split it was selected on.
    Older results (Student-t patient intervals, no validation Dice) render with n/a."""
    boot = bool(summary) and all("ci_patients_method" in r for r in summary)
    selection = info.get("model_selection") or {}
    rows = [
        [
            r["target"],
            _scenario(r),
            r["seeds"],
            r["patients"],
            _f(r.get("dice_mean")),
            _ci(r, "dice", "patients"),
            _ci(r, "dice", "seeds"),
            _f(r.get("val_dice")),
            r.get("selected_on") or selection.get(r["scenario"], "n/a"),
            _f(r.get("iou_mean")),
            _ci(r, "iou", "patients"),
            _f(r.get("hd95_mean"), 1),
        ]
        for r in summary
    ]
    kind = "bootstrap" if boot else "Student-t"
    header = [
        "target",
        "scenario",
        "seeds",
        "test patients",
        "test Dice",
        f"95% CI (patients, {kind})",
        "95% CI (seeds, Student-t)",
        "val Dice",
        "selected on",
        "IoU",
        f"IoU 95% CI (patients, {kind})",
        "HD95 (px)",
    ]
    if boot:
        ci_note = (
            "Test Dice: mean over the target test patients of each patient's Dice averaged over "
            f"seeds. CI (patients): 95% {_e(summary[0]['ci_patients_method'])} (bias-corrected "
            "and accelerated), clipped to [0, 1]; CI (seeds): "
            "Student-t over the seeds' mean Dice, clipped to [0, 1] (training-seed variation "
            "only, wide with few seeds)."
        )
    else:
        ci_note = (
            "Dice: mean over seeds of each seed's mean over patients. CI (seeds): Student-t over "
            "the seeds' means; CI (patients): Student-t over patients' means over seeds."
        )
    size = (info.get("segmentation_config") or {}).get("image_size", "?")
    return "\n".join(
        [
            _table(header, rows, left=2),
            "<p class='note'>Dice/IoU per patient pool all of the patient's test slices. "
            f"{ci_note} Val Dice: the best validation Dice of each seed's segmenter (the "
            "checkpoint kept), averaged over seeds, on the split named under <i>selected on</i>; "
            "for scenarios selected on source or translated patients it does not estimate "
            "target Dice (n/a: not recorded). HD95 in pixels of the "
            f"{_e(size)} px network grid. {_e(info.get('metric_policy', ''))}</p>",
        ]
    )


def statistics_table(tests: list[Mapping[str, Any]]) -> str:
    """The statistics section: every paired comparison with effect sizes, raw and
    Holm-adjusted p, and the seed-level checks (absent in older results: n/a)."""
    rows = []
    for t in tests:
        frac = t.get("label_fraction") or 0.0
        n_seeds = t.get("n_seeds")
        better = t.get("seeds_a_better")
        name = f"{_name(t['a'])} vs {_name(t['b'])}" + (f" ({frac:.0%} labels)" if frac else "")
        wins = f"{round(better * n_seeds)}/{n_seeds}" if better is not None and n_seeds else "n/a"
        rows.append(
            [
                t["target"],
                name,
                t["n"],
                _f(n_seeds),
                _est_ci(t.get("mean_diff"), t.get("diff_ci_lo"), t.get("diff_ci_hi")),
                _f(t.get("median_diff")),
                _est_ci(t.get("d_z"), t.get("d_z_ci_lo"), t.get("d_z_ci_hi"), 2),
                _f(t.get("statistic"), 1),
                _p(t.get("p")),
                _p(t.get("p_holm")),
                _p(t.get("p_signflip")),
                _p(t.get("p_every_seed")),
                _f(t.get("seed_sd")),
                wins,
            ]
        )
    n_tests = max((t.get("n_tests") or 0 for t in tests), default=0) or len(tests)
    return "\n".join(
        [
            _table(
                [
                    "target",
                    "comparison",
                    "patients",
                    "seeds",
                    "mean diff [95% CI]",
                    "median diff",
                    "d_z [95% CI]",
                    "W",
                    "p (Wilcoxon)",
                    "p (Holm)",
                    "p (sign-flip)",
                    "p (every seed)",
                    "seed SD of diff",
                    "seeds first better",
                ],
                rows,
                left=2,
            ),
            "<p class='note'>Paired by test patient, differences first minus second, the "
            "patient as the unit: each patient's Dice is averaged over seeds before pairing. "
            "p (Wilcoxon): two-sided Wilcoxon signed-rank test, exact up to 20 patients; "
            "p (sign-flip): exact two-sided sign-flip permutation test of the mean difference. "
            "Mean diff CI: bootstrap (BCa) over patients, clipped to [-1, 1]; d_z: Cohen's d_z "
            "(mean / SD of the differences) with a bootstrap CI. Seeds: p (every seed) is an "
            "intersection-union test that the difference has the same sign and is significant "
            "in every seed (the largest per-seed Wilcoxon p; valid however the seeds depend on "
            "each other); seed SD: SD across seeds of the per-seed mean difference. "
            f"{n_tests} tests are reported; p (Holm) is Holm-adjusted over all of them. "
            f"Significance level {ALPHA}.</p>",
        ]
    )


def translation_tables(tr: Mapping[str, Any] | None) -> list[str]:
    """HTML parts of the translation metrics (``evaluate_translation``'s result): per
    direction the whole-head table and the lesion-level table (model, identity, histogram),
    then the real-target segmenters' Dice on translated source slices when present."""
    from mrict.translation.lesion_metrics import lesion_table, segmenter_table

    parts: list[str] = []
    if not tr or "mr2ct" not in tr:
        parts.append(
            "<p class='note'>No paired test data (DATA/paired_test): translation "
            "fidelity metrics not computed.</p>"
        )
    else:
        split = f" {tr['paired_split']}" if tr.get("paired_split") else ""
        lesion = tr.get("lesion") or {}
        units = {"mr2ct": "HU", "ct2mr": "MAE in [0, 1], others in [-1, 1] units"}
        for direction, title in (("mr2ct", "MRI &rarr; CT"), ("ct2mr", "CT &rarr; MRI")):
            methods = tr[direction]
            keys = sorted({k for v in methods.values() for k in v})
            parts.append(
                f"<p><b>{title}</b> on {_e(tr.get('n_slices', '?'))} paired{_e(split)} slices: "
                "whole head</p>"
            )
            parts.append(
                _table(
                    ["method", *keys],
                    [[m, *(_f(v.get(k)) for k in keys)] for m, v in methods.items()],
                )
            )
            if direction in lesion:
                header, rows = lesion_table(
                    lesion[direction], "CT" if direction == "mr2ct" else "MR"
                )
                parts.append(f"<p><b>{title}</b> at the lesion ({units[direction]})</p>")
                parts.append(_table(header, rows))
        parts.append(f"<p class='note'>{_e(tr.get('protocol', ''))}</p>")
        if lesion:
            masks = "" if lesion.get("tumour_masks") else " No tumour masks: tumour figures n/a."
            parts.append(
                f"<p class='note'>Lesion level: {_e(lesion.get('protocol', ''))}{masks}</p>"
            )
    seg = (tr or {}).get("segmenter_dice") or {}
    for direction in ("mr2ct", "ct2mr"):
        if direction in seg:
            header, rows = segmenter_table(seg[direction])
            parts.append(
                f"<p><b>{_e(seg[direction]['label'])}</b>, {_e(seg.get('split', '?'))} split</p>"
            )
            parts.append(_table(header, rows))
    if seg:
        parts.append(f"<p class='note'>{_e(seg.get('protocol', ''))}</p>")
    return parts


def translator_check_note(info: Mapping[str, Any]) -> str:
    """HTML paragraph on the study's translator check (``info["translator_check"]`` of
    :func:`mrict.study.translator.study_translator`): every attempt's seed, contrast ratios
    and verdict, and which one the study used; empty for studies written before it."""
    check = info.get("translator_check")
    if not check or not check.get("attempts"):
        return ""
    from mrict.translation.selection import CARRIED_MIN_RATIO

    verdict = {True: "carries the tumour", False: "loses the tumour", None: "not checked"}
    items = []
    for i, a in enumerate(check["attempts"]):
        used = " (used)" if i == check.get("chosen") else ""
        items.append(
            f"seed {_e(a.get('seed'))}: tumour contrast ratio MR&rarr;CT "
            f"{_f(a.get('mr2ct_contrast_ratio'), 2)}, CT&rarr;MR "
            f"{_f(a.get('ct2mr_contrast_ratio'), 2)}, selection score {_f(a.get('score'))}, "
            f"{verdict.get(a.get('carried'), 'not checked')}{used}"
        )
    head = (
        f"Translator check on the paired validation set (a translator carries the tumour "
        f"across when its translated tumour-to-brain contrast is at least "
        f"{CARRIED_MIN_RATIO:g} of the real one in both directions; at most "
        f"{_e(check.get('tries'))} seeds are tried): "
    )
    warn = ""
    if check.get("carried") is False:
        warn = (
            " <b>No attempt carried the tumour across: the translated scenarios (3)-(5) rest "
            "on a translator that loses it.</b>"
        )
    return f"<p class='note'>{head}{'; '.join(items)}.{warn}</p>"


TEMPLATE = "report.html.j2"


@functools.cache
def environment() -> jinja2.Environment:
    """The report's jinja2 environment: templates from the package data, autoescaping on."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mrict.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["num"] = _f
    env.filters["png_base64"] = _png_base64
    env.globals["table"] = _html_table
    return env


def _html_table(header: list[str], rows: Iterable[Iterable[Any]], left: int = 1) -> Markup:
    """``_table`` for the template: its cells are escaped there, so the result is Markup."""
    return Markup(_table(header, [list(r) for r in rows], left))


def _data_rows(info: Mapping[str, Any]) -> list[list[Any]]:
    return [
        [m, split, v["patients"], v["slices"], v["labelled_slices"], v["tumour_slices"]]
        for m, splits in info["data_summary"].items()
        for split, v in splits.items()
    ]


def _scenario_rows(info: Mapping[str, Any]) -> list[list[Any]]:
    selection = info.get("model_selection") or {}
    return [[_name(key), sc.data, selection.get(key, sc.selection)] for key, sc in REGISTRY.items()]


def build_html(doc: Mapping[str, Any], figures: Mapping[str, Path]) -> str:
    """The report page as a string. Values from ``doc`` are escaped by the template; the
    helpers' HTML (tables, conclusion and translation parts) is escaped by the helpers."""
    info = doc["info"]
    return (
        environment()
        .get_template(TEMPLATE)
        .render(
            info=info,
            timing=info["timing_s"],
            gan_config=info.get("gan_config") or {},
            empty_counts=info["empty_counts"],
            figures=figures,
            conclusion=[Markup(s) for s in conclusion(doc)],
            results=Markup(results_table(doc["summary"], info)),
            statistics=Markup(statistics_table(doc["tests"])),
            translation=[Markup(p) for p in translation_tables(doc.get("translation"))],
            translator_check=Markup(translator_check_note(info)),
            data_rows=_data_rows(info),
            scenario_rows=_scenario_rows(info),
        )
    )


def write_report(path: Path, doc: Mapping[str, Any], figures: Mapping[str, Path]) -> Path:
    """Write the self-contained report page atomically."""
    atomic_write_text(Path(path), build_html(doc, figures))
    return Path(path)
