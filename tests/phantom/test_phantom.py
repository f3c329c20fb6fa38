"""The built-in data set: tissue values, contrasts, masks, pairing and determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mrict.cli import run
from mrict.data.datasets import load_modality
from mrict.data.io import read_slices
from mrict.phantom.anatomy import make_patient
from mrict.phantom.atlas import (
    CSF,
    DIPLOE,
    FAT,
    GM,
    INNER_TABLE,
    NECROSIS,
    OEDEMA,
    OUTER_TABLE,
    TUMOUR,
    WM,
    atlas_slices,
)
from mrict.phantom.render import (
    render_ct,
    render_mri,
    sample_ct_protocol,
    sample_mr_protocol,
    tissue_signal,
)
from mrict.phantom.simulate import simulate_dataset


def _patient(seed=0, size=128, slices=4, **kw):
    return make_patient(np.random.default_rng(seed), size, slices, tumour_free_fraction=0.0, **kw)


def test_atlas_holds_every_tissue():
    atlas, mm = atlas_slices()
    assert atlas.dtype == np.uint8 and mm == 1.0
    counts = np.bincount(atlas.ravel(), minlength=9)
    assert (counts[1:9] > 1000).all()  # every tissue is present in quantity
    assert counts[WM] > counts[CSF] and counts[GM] > counts[CSF]


@pytest.mark.parametrize("seed", [0, 1])
def test_ct_tissue_statistics_in_literature_ranges(seed):
    anatomy = _patient(seed, size=192)
    rng = np.random.default_rng(seed)
    protocol = sample_ct_protocol(rng, 192, contrast=False)
    ct = np.stack([render_ct(lab, protocol, rng) for lab in anatomy.labels])
    assert ct.dtype == np.int16

    from scipy import ndimage as ndi

    def median(label, erode=2):
        # interior pixels only: partial volume at tissue borders is expected
        sel = anatomy.labels == label
        if erode:
            inner = np.stack([ndi.binary_erosion(m, iterations=erode) for m in sel])
            sel = inner if inner.sum() > 50 else sel
        return float(np.median(ct[sel]))

    assert median(0) == -1000
    assert -110 <= median(FAT) <= -60
    assert 0 <= median(CSF) <= 16
    assert 20 <= median(WM) <= 33
    assert 31 <= median(GM) <= 46
    assert median(GM) > median(WM)
    # thin bone is blurred by the scanner PSF: its median sits below the table value
    assert 1000 <= max(median(OUTER_TABLE, 0), median(INNER_TABLE, 0)) <= 1950
    assert 300 <= median(DIPLOE, 0) <= 1400
    if (anatomy.labels == TUMOUR).sum() > 200:
        assert median(TUMOUR) < median(GM) + 3  # iso- to hypodense
    if (anatomy.labels == OEDEMA).sum() > 200:
        assert median(OEDEMA) < median(WM)


def test_contrast_ct_enhances_the_tumour():
    anatomy = _patient(1, size=128)
    rng = np.random.default_rng(1)
    ct = render_ct(anatomy.labels[2], sample_ct_protocol(rng, 128, contrast=True), rng)
    sel = anatomy.labels[2]
    assert np.median(ct[sel == TUMOUR]) > np.median(ct[sel == GM]) + 15


def test_mri_contrast_order():
    rng = np.random.default_rng(3)
    s = {c: tissue_signal(sample_mr_protocol(rng, c, 128)) for c in ("t1", "t1c", "t2", "flair")}
    assert s["t1"][WM] > s["t1"][GM] > s["t1"][CSF]
    assert s["t2"][CSF] > s["t2"][GM] > s["t2"][WM]
    assert s["flair"][CSF] < 0.05 * s["flair"][WM]  # CSF nulled
    assert s["flair"][OEDEMA] > s["flair"][WM] and s["flair"][OEDEMA] > s["flair"][GM]
    assert s["t1c"][TUMOUR] > 1.3 * s["t1"][TUMOUR]  # gadolinium enhancement
    assert s["t1"][NECROSIS] < s["t1"][GM]


def test_rendered_mri_is_rician_and_biased():
    anatomy = _patient(5)
    rng = np.random.default_rng(5)
    protocol = sample_mr_protocol(rng, "t1", 128)
    img = render_mri(anatomy.labels[0], protocol, rng)
    assert (img >= 0).all()
    air = img[anatomy.labels[0] == 0]
    assert 0 < air.mean() < 0.2 * img[anatomy.labels[0] == WM].mean()  # Rician noise floor


def test_tumour_mask_matches_labels_and_mass_effect():
    anatomy = _patient(2, size=128, slices=6)
    assert set(np.unique(anatomy.tumour)) <= {0, 1}
    np.testing.assert_array_equal(anatomy.tumour == 1, np.isin(anatomy.labels, (TUMOUR, NECROSIS)))
    np.testing.assert_array_equal(anatomy.oedema == 1, anatomy.labels == OEDEMA)
    assert anatomy.tumour.any()
    # the oedema spreads into white matter, not into the skull
    assert not np.isin(anatomy.labels[anatomy.tumour == 1], (0, OUTER_TABLE, DIPLOE)).any()


def test_tumour_free_fraction():
    none = make_patient(np.random.default_rng(1), 64, 20, tumour_free_fraction=1.0)
    assert not none.tumour.any()


@pytest.mark.parametrize("fmt", ["dicom", "nifti", "png"])
def test_simulated_dataset_layout_pairing_and_reader(tmp_path, fmt):
    out = simulate_dataset(
        tmp_path / "sim",
        mri_patients=3,
        ct_patients=3,
        test_patients=2,
        slices_per_patient=3,
        size=64,
        seed=4,
        fmt=fmt,
        progress=False,
        workers=1,
    )
    for sub in (
        "MR/image_MR",
        "MR/mask_MR",
        "CT/image_CT",
        "CT/mask_CT",
        "paired_test/MR",
        "paired_test/CT",
        "paired_test/mask",
    ):
        assert any((out / sub).iterdir()), sub
    manifest = json.loads((out / "manifest.json").read_text())
    groups = {p["id"]: p["group"] for p in manifest["patients"]}
    assert (out / "preview.png").stat().st_size > 10_000
    mr = load_modality(out, "MR", size=64, progress=False)
    ct = load_modality(out, "CT", size=64, progress=False)
    assert set(mr.patients()).isdisjoint(ct.patients())
    assert all(groups[p] == "mri" for p in mr.patients()) and all(
        groups[p] == "ct" for p in ct.patients()
    )
    assert len(mr) == len(ct) == 9 and mr.has_mask.all()
    # paired test: same names in the three folders, same anatomy in both modalities
    names = sorted(p.name for p in (out / "paired_test" / "MR").iterdir())
    assert names == sorted(p.name for p in (out / "paired_test" / "CT").iterdir())
    first = names[0]
    mri = read_slices(out / "paired_test" / "MR" / first, "MR")[0].pixels
    cti = read_slices(out / "paired_test" / "CT" / first, "CT")[0].pixels
    head_ct = cti > -500
    head_mr = mri > 0.15 * np.percentile(mri, 99)
    overlap = (head_ct & head_mr).sum() / (head_ct | head_mr).sum()
    assert overlap > 0.85


def test_simulation_is_deterministic(tmp_path):
    kw = dict(
        mri_patients=2,
        ct_patients=2,
        test_patients=1,
        slices_per_patient=2,
        size=48,
        progress=False,
    )
    a = simulate_dataset(tmp_path / "a", seed=7, workers=1, **kw)
    b = simulate_dataset(tmp_path / "b", seed=7, workers=2, **kw)
    c = simulate_dataset(tmp_path / "c", seed=8, workers=1, **kw)
    from tests.conftest import _tree_digest  # noqa: PLC0415

    assert _tree_digest(a) == _tree_digest(b)
    assert _tree_digest(a) != _tree_digest(c)


def test_simulate_cli_and_errors(tmp_path, capsys):
    out = tmp_path / "d"
    args = [
        "simulate",
        str(out),
        "--mri-patients",
        "1",
        "--ct-patients",
        "1",
        "--test-patients",
        "1",
        "--slices-per-patient",
        "2",
        "--size",
        "48",
        "--format",
        "png",
    ]
    assert run(args) == 0
    assert run(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert run([*args, "--overwrite"]) == 0
    assert run(["simulate", str(tmp_path / "e"), "--format", "jpeg"]) == 2
    assert "unknown --format" in capsys.readouterr().err
    assert run(["simulate", str(tmp_path / "f"), "--size", "8"]) == 2
    assert not (tmp_path / "f").exists() and not list(tmp_path.glob(".f.partial*"))
