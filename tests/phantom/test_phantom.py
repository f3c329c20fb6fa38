"""The built-in data set: tissue values, contrasts, masks, pairing and determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from mrict.cli import run
from mrict.data.datasets import load_modality
from mrict.data.io import read_slices
from mrict.phantom.anatomy import make_patient, max_slices
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
from mrict.phantom.lesion import draw_lesion, sample_radius
from mrict.phantom.render import (
    render_ct,
    render_mri,
    sample_ct_protocol,
    sample_mr_protocol,
    tissue_signal,
)
from mrict.phantom.simulate import simulate_dataset


def _patient(seed=0, size=128, slices=4, **kw):
    kw.setdefault("tumour_free_fraction", 0.0)
    return make_patient(np.random.default_rng(seed), size, slices, **kw)


def _ct(anatomy, protocol, rng):
    return np.stack(
        [
            render_ct(
                anatomy.fractions[k], anatomy.texture[:, k], protocol, rng, anatomy.spacing_mm
            )
            for k in range(len(anatomy.fractions))
        ]
    )


def _noise_free_ct(anatomy, k, hu=None, texture=True):
    rng = np.random.default_rng(0)
    protocol = sample_ct_protocol(rng, anatomy.tumour.shape[-1], contrast=False)
    protocol.update(noise_hu=0.0, psf_px=0.0, beam_hardening_hu=0.0)
    if hu is not None:
        protocol["hu"] = list(hu)
    tex = anatomy.texture[:, k] if texture else np.zeros_like(anatomy.texture[:, k])
    return render_ct(anatomy.fractions[k], tex, protocol, rng, anatomy.spacing_mm)


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
    ct = _ct(anatomy, protocol, rng)
    assert ct.dtype == np.int16

    def median(label, purity=0.95):
        # pixels that hold (nearly) one tissue: partial volume at borders is expected
        sel = anatomy.fractions[:, label] > purity
        if sel.sum() < 50:
            sel = anatomy.fractions[:, label] > 0.6
        return float(np.median(ct[sel]))

    assert median(0) == -1000
    assert -110 <= median(FAT, 0.6) <= -40
    assert 0 <= median(CSF) <= 16
    assert 20 <= median(WM) <= 33
    assert 31 <= median(GM) <= 46
    assert median(GM) > median(WM)
    # thin bone is blurred by partial volume and the PSF: its median sits below the table value
    assert 800 <= max(median(OUTER_TABLE, 0.6), median(INNER_TABLE, 0.6)) <= 1950
    assert 300 <= median(DIPLOE, 0.6) <= 1400
    if (anatomy.fractions[:, TUMOUR] > 0.95).sum() > 200:
        assert median(TUMOUR) < median(GM) + 3  # iso- to hypodense without contrast
    if (anatomy.fractions[:, OEDEMA] > 0.95).sum() > 200:
        assert median(OEDEMA) < median(WM)


def test_contrast_ct_enhances_the_tumour():
    anatomy = _patient(1, size=128)
    assert anatomy.params["tumour"]["lesions"][0]["enhancing"]
    rng = np.random.default_rng(1)
    ct = _ct(anatomy, sample_ct_protocol(rng, 128, contrast=True), rng)
    tumour = anatomy.fractions[:, TUMOUR] > 0.9
    grey = anatomy.fractions[:, GM] > 0.9
    assert tumour.sum() > 20
    assert np.median(ct[tumour]) > np.median(ct[grey]) + 15
    # a lesion that does not enhance stays near grey matter even after contrast
    rng = np.random.default_rng(1)
    flat = _ct(anatomy, sample_ct_protocol(rng, 128, contrast=True, enhancing=False), rng)
    assert np.median(flat[tumour]) < np.median(flat[grey]) + 5


def test_ct_noise_falls_with_slice_thickness_and_pixel_size_and_bone_hardens_the_beam():
    rng = np.random.default_rng(0)
    thin = [sample_ct_protocol(rng, 512, thickness_mm=1.0)["noise_hu"] for _ in range(50)]
    thick = [sample_ct_protocol(rng, 512, thickness_mm=5.0)["noise_hu"] for _ in range(50)]
    assert min(thick) >= 3.0 and max(thick) <= 5.5  # head CT, 512 matrix, 5 mm slices
    assert np.mean(thin) > 2.0 * np.mean(thick)
    coarse = [sample_ct_protocol(rng, 128, thickness_mm=5.0)["noise_hu"] for _ in range(50)]
    assert np.mean(coarse) == pytest.approx(np.mean(thick) / 4, rel=0.15)  # 4x larger pixels
    anatomy = _patient(3, size=128, slices=2)
    rng = np.random.default_rng(3)
    protocol = sample_ct_protocol(rng, 128, contrast=False)
    protocol.update(noise_hu=0.0, psf_px=0.0, beam_hardening_hu=8.0)
    hard = render_ct(anatomy.fractions[0], anatomy.texture[:, 0], protocol, rng, anatomy.spacing_mm)
    protocol["beam_hardening_hu"] = 0.0
    soft = render_ct(anatomy.fractions[0], anatomy.texture[:, 0], protocol, rng, anatomy.spacing_mm)
    brain = (anatomy.fractions[0, GM] + anatomy.fractions[0, WM]) > 0.99
    gain = (hard - soft)[brain].astype(float)
    bone_near = ndi.binary_dilation(anatomy.fractions[0, INNER_TABLE] > 0.3, iterations=3)
    assert gain[bone_near[brain]].mean() > 1.0 > gain[~bone_near[brain]].mean()


def test_mri_contrast_order():
    rng = np.random.default_rng(3)
    s = {c: tissue_signal(sample_mr_protocol(rng, c, 128)) for c in ("t1", "t1c", "t2", "flair")}
    assert s["t1"][WM] > s["t1"][GM] > s["t1"][CSF]
    assert s["t2"][CSF] > s["t2"][GM] > s["t2"][WM]
    assert s["flair"][CSF] < 0.05 * s["flair"][WM]  # CSF nulled
    assert s["flair"][OEDEMA] > s["flair"][WM] and s["flair"][OEDEMA] > s["flair"][GM]
    assert s["t1c"][TUMOUR] > 1.3 * s["t1"][TUMOUR]  # gadolinium enhancement
    assert s["t1"][NECROSIS] < s["t1"][GM]
    rng = np.random.default_rng(3)
    plain = tissue_signal(sample_mr_protocol(rng, "t1c", 128, enhancing=False))
    assert plain[TUMOUR] < s["t1c"][TUMOUR] / 1.3


def test_rendered_mri_is_rician_and_biased():
    anatomy = _patient(5)
    rng = np.random.default_rng(5)
    protocol = sample_mr_protocol(rng, "t1", 128)
    img = render_mri(anatomy.fractions[0], anatomy.texture[:, 0], protocol, rng)
    assert (img >= 0).all()
    air = img[anatomy.fractions[0, 0] > 0.999]
    assert 0 < air.mean() < 0.2 * img[anatomy.fractions[0, WM] > 0.95].mean()  # Rician floor


def test_partial_volume_fractions_and_mixing():
    anatomy = _patient(0, size=256, slices=2)
    f = anatomy.fractions
    assert f.dtype == np.float32 and f.shape == (2, 12, 256, 256)
    assert (f >= 0).all()
    np.testing.assert_allclose(f.sum(1), 1.0, atol=1e-5)
    # boundary pixels between grey and white matter hold both
    mixed = (f[:, GM] > 0.3) & (f[:, WM] > 0.3) & (f[:, GM] + f[:, WM] > 0.99)
    assert mixed.sum() > 100
    # and render to a value strictly between the two tissues (noise- and texture-free)
    hu = np.zeros(12)
    hu[GM], hu[WM] = 40.0, 20.0
    ct = _noise_free_ct(anatomy, 0, hu, texture=False)
    values = ct[mixed[0]]
    assert (values > 20).all() and (values < 40).all()
    assert len(np.unique(values)) > 5


def test_no_staircase_at_512_px():
    """Nearest-neighbour atlas sampling jumped a tissue's fraction from 0 to 1 between
    neighbouring pixels; with the smoothed fractions a step is a fraction of that."""
    anatomy = _patient(4, size=512, slices=1, with_tumour=False)
    f = anatomy.fractions[0, :9]  # the atlas tissues (lesions are analytic)
    jumps = max(np.abs(np.diff(f, axis=1)).max(), np.abs(np.diff(f, axis=2)).max())
    assert jumps < 0.5
    # and the GM/WM edge is a ramp several pixels wide
    row = f[WM, 256]
    ramp = (row > 0.05) & (row < 0.95)
    assert ramp.sum() >= 8


def test_tumour_mask_is_the_lesion_fraction_and_stays_in_brain():
    anatomy = _patient(2, size=128, slices=6)
    assert set(np.unique(anatomy.tumour)) <= {0, 1} and anatomy.tumour.dtype == np.uint8
    lesion = anatomy.fractions[:, TUMOUR] + anatomy.fractions[:, NECROSIS]
    np.testing.assert_array_equal(anatomy.tumour == 1, lesion > 0.5)
    np.testing.assert_array_equal(anatomy.oedema == 1, anatomy.fractions[:, OEDEMA] > 0.5)
    assert anatomy.tumour.any()
    skull = anatomy.fractions[:, [0, OUTER_TABLE, DIPLOE, INNER_TABLE]].sum(1)
    assert skull[anatomy.tumour == 1].max() < 0.5
    # oedema mostly replaces white matter
    assert anatomy.oedema.any()
    atlas_wm = (anatomy.labels == WM) | (anatomy.labels == OEDEMA)
    assert (anatomy.oedema & atlas_wm).sum() > 0


def test_lesions_are_continuous_in_3d():
    ious = []
    for seed in range(8):
        anatomy = _patient(seed, size=96, slices=8, slice_spacing_mm=2.0)
        t = anatomy.tumour.astype(bool)
        for a, b in zip(t[:-1], t[1:], strict=True):
            if a.sum() > 20 and b.sum() > 20:
                ious.append((a & b).sum() / (a | b).sum())
    assert len(ious) > 10
    assert np.median(ious) > 0.6


def test_lesion_size_shape_and_appearance_vary():
    rng = np.random.default_rng(0)
    lesions = [draw_lesion(rng, np.zeros(3), sample_radius(rng)) for _ in range(400)]
    radii = np.array([lesion.lobes[0].radius_mm for lesion in lesions])
    assert radii.min() >= 4.0 and radii.max() <= 25.0
    assert (radii < 6).mean() > 0.1 and (radii > 15).mean() > 0.15  # mm to cm
    lobed = np.array([len(lesion.lobes) > 1 for lesion in lesions])
    necrotic = np.array([lesion.necrotic_fraction > 0 for lesion in lesions])
    enhancing = np.array([lesion.enhancing for lesion in lesions])
    assert 0.1 < lobed.mean() < 0.7 and 0.1 < necrotic.mean() < 0.7
    assert not necrotic[radii <= 10].any()  # small lesions have no necrotic core
    assert 0.8 < enhancing.mean() < 0.97
    # irregular, not spheres: the radius varies with direction
    zz = np.linspace(-30, 30, 61)
    sd = lesions[0].signed_distance(0.0, zz[:, None], zz[None, :])
    assert sd.min() < 0
    # rendered lesions: sphere-equivalent diameters from under 1 cm to several cm
    diameters = []
    for seed in range(12):
        t = _patient(seed, size=128, slices=6).tumour
        area = t.reshape(len(t), -1).sum(1).max() * (230 / 128) ** 2
        diameters.append(2 * np.sqrt(area / np.pi))
    assert min(diameters) < 15 and max(diameters) > 25


def test_within_tissue_texture():
    anatomy = _patient(6, size=192, slices=2)
    ct = _noise_free_ct(anatomy, 0).astype(float)
    plain = _noise_free_ct(anatomy, 0, texture=False).astype(float)
    wm = anatomy.fractions[0, WM] > 0.99
    assert plain[wm].std() < 0.6  # one tissue: flat without texture
    assert 0.8 < ct[wm].std() < 4.0  # texture of a few HU
    rng = np.random.default_rng(6)
    protocol = sample_mr_protocol(rng, "t1", 192)
    protocol.update(noise_fraction=0.0, bias_amplitude=0.0)
    mr = render_mri(anatomy.fractions[0], anatomy.texture[:, 0], protocol, rng)
    rel = mr[wm].std() / mr[wm].mean()
    assert 0.01 < rel < 0.08
    # the texture is spatially correlated, not white noise
    fine = anatomy.texture[0, 0]
    lag = np.corrcoef(fine[:, :-1].ravel(), fine[:, 1:].ravel())[0, 1]
    assert lag > 0.3


def test_lesion_z_range_bounds_the_body():
    rng = np.random.default_rng(3)
    yy, xx = np.meshgrid(np.linspace(-60, 60, 121), np.linspace(-60, 60, 121), indexing="ij")
    for _ in range(5):
        lesion = draw_lesion(rng, np.array([30.0, 0.0, 0.0]), sample_radius(rng))
        lo, hi = lesion.z_range_mm()
        assert lo < 30.0 < hi
        for z in (lo - 0.5, hi + 0.5):
            assert lesion.signed_distance(z, yy, xx).min() > 0  # outside the range: no body
        for z in (lo + 0.2 * (hi - lo), hi - 0.2 * (hi - lo)):
            assert lesion.signed_distance(z, yy, xx).min() < 0


def test_tumour_free_fraction_places_the_slab():
    free = []
    for seed in range(10):
        anatomy = _patient(seed, size=64, slices=10, tumour_free_fraction=0.5)
        free.append(len(anatomy.params["tumour_free_slices"]) / 10)
        assert anatomy.tumour.any()  # the slab always cuts the lesion
    assert 0.3 <= np.mean(free) <= 0.75
    none = make_patient(np.random.default_rng(1), 64, 20, tumour_free_fraction=1.0)
    assert not none.tumour.any() and not none.params["tumour"]["present"]


def test_slice_spacing_must_fit_the_atlas():
    assert max_slices(3.0) == 24 and max_slices(1.0) == 70
    with pytest.raises(ValueError):
        _patient(0, size=64, slices=30, slice_spacing_mm=3.0)


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
    assert run(["simulate", str(tmp_path / "g"), "--slice-spacing", "9"]) == 2
    assert "--slice-spacing must be between 1 and 5 mm" in capsys.readouterr().err
    too_many = ["--slices-per-patient", "30", "--slice-spacing", "3"]
    assert run(["simulate", str(tmp_path / "h"), *too_many]) == 2
    err = capsys.readouterr().err
    assert "do not fit" in err and "at most 24" in err and "Traceback" not in err
    assert not (tmp_path / "g").exists() and not (tmp_path / "h").exists()
