"""Upsampling choice, tumour-aware losses, paired-validation selection and the simulator's
paired validation set."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mrict.translation.lesion import (
    REFERENCE_QUANTILES,
    CycleSegmenters,
    LesionReference,
    lesion_appearance_loss,
    lesion_distribution_loss,
    lesion_reference,
    lesion_stats,
    masked_seg_loss,
    ring_mask,
    wasserstein_to_reference,
)
from mrict.translation.networks import ResnetGenerator, init_weights


def _disc_masks(b: int = 2, size: int = 32, radius: int = 5) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (((yy - 16) ** 2 + (xx - 16) ** 2) <= radius**2).float()
    return disc.expand(b, 1, size, size).clone()


@pytest.mark.parametrize("mode", ["resize", "transpose"])
def test_generator_upsampling_options_keep_shape_and_record_the_choice(mode):
    g = init_weights(ResnetGenerator(1, 1, 4, 1, upsample=mode))
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert g(x).shape == x.shape
    assert g.arch["upsample"] == mode
    has_transpose = any(isinstance(m, torch.nn.ConvTranspose2d) for m in g.modules())
    assert has_transpose == (mode == "transpose")


def test_resize_upsampling_has_no_checkerboard_on_a_constant_input():
    """A constant feature map stays constant through resize + conv (away from the border),
    while a transposed stride-2 convolution imprints a 2-pixel period."""
    from mrict.translation.networks import upsampling

    torch.manual_seed(0)
    x = torch.ones(1, 4, 8, 8)
    resize = torch.nn.Sequential(*upsampling(4, 2, "resize"))
    trans = torch.nn.Sequential(*upsampling(4, 2, "transpose"))
    with torch.no_grad():
        r = resize(x)[..., 2:-2, 2:-2]
        t = trans(x)[..., 2:-2, 2:-2]
    assert float(r.std(dim=(-1, -2)).max()) < 1e-5
    assert float(t.std(dim=(-1, -2)).max()) > 1e-3


def test_unknown_upsampling_is_refused():
    with pytest.raises(ValueError, match="unknown upsampling"):
        ResnetGenerator(1, 1, 4, 1, upsample="pixelshuffle")  # type: ignore[arg-type]


def test_ring_and_lesion_stats_hand_computed():
    masks = _disc_masks(1)
    ring = ring_mask(masks, width=2)
    assert float((ring * masks).sum()) == 0.0 and float(ring.sum()) > 0
    img = torch.full((1, 1, 32, 32), -0.5)
    img[masks.bool()] = 0.4
    t, r, v = lesion_stats(img, masks, torch.tensor([True]))
    assert bool(v[0]) and float(t[0]) == pytest.approx(0.4) and float(r[0]) == pytest.approx(-0.5)
    # unlabelled or tumour-free slices do not count
    _, _, v = lesion_stats(img, masks, torch.tensor([False]))
    assert not bool(v[0])
    _, _, v = lesion_stats(img, torch.zeros_like(masks), torch.tensor([True]))
    assert not bool(v[0])


def test_lesion_reference_and_appearance_loss_values_and_gradients():
    masks = _disc_masks(2)
    lab = torch.tensor([True, True])
    real = torch.full((2, 1, 32, 32), 0.0)
    real[masks.bool()] = 0.3  # tumour 0.3 on background 0: contrast 0.3
    ref = lesion_reference(real, masks, lab)
    assert ref is not None and ref.slices == 2
    assert ref.tumour == pytest.approx(0.3) and ref.contrast == pytest.approx(0.3)
    # a translation whose tumour is 0.5 on 0: |0.5 - 0.3| + |0.5 - 0.3| = 0.4
    fake = torch.zeros(2, 1, 32, 32)
    fake[masks.bool()] = 0.5
    fake.requires_grad_()
    loss = lesion_appearance_loss(fake, masks, lab, ref)
    assert float(loss.detach()) == pytest.approx(0.4, abs=1e-6)
    loss.backward()
    assert fake.grad is not None and float(fake.grad.abs().sum()) > 0
    # matching appearance: zero loss
    assert float(lesion_appearance_loss(real, masks, lab, ref)) == pytest.approx(0.0, abs=1e-6)


def test_wasserstein_to_reference_hand_computed():
    grid = (torch.arange(8, dtype=torch.float32) + 0.5) / 8  # quantiles of U(0, 1) at 8 points
    # the same points: zero; shifted by 0.25: exactly 0.25; a constant reference 0.5
    # against {0, 1}: 0.5
    assert float(wasserstein_to_reference(grid, grid)) == pytest.approx(0.0, abs=1e-7)
    assert float(wasserstein_to_reference(grid + 0.25, grid)) == pytest.approx(0.25, abs=1e-6)
    assert float(
        wasserstein_to_reference(torch.tensor([0.0, 1.0]), torch.full((4,), 0.5))
    ) == pytest.approx(0.5)
    # order of the values does not matter; the reference is interpolated between quantiles
    perm = grid[torch.randperm(8, generator=torch.Generator().manual_seed(0))]
    assert float(wasserstein_to_reference(perm, grid)) == pytest.approx(0.0, abs=1e-7)
    two = torch.tensor([0.0, 1.0])  # quantile function of {0, 1} at 1/4 and 3/4
    # 4 values at positions 1/8, 3/8, 5/8, 7/8: reference 0, 0.25, 0.75, 1
    vals = torch.tensor([0.0, 0.25, 0.75, 1.0])
    assert float(wasserstein_to_reference(vals, two)) == pytest.approx(0.0, abs=1e-6)


def test_distribution_term_keeps_a_mixed_population_that_the_mean_term_flattens():
    """Real target tumours at 0.1 and at 0.5 (population mean 0.3): translations that
    reproduce them exactly cost nothing under the distribution term, while the mean term
    pulls both slices to 0.3; a translation with every tumour at 0.3 is the reverse."""
    masks = _disc_masks(2)
    lab = torch.tensor([True, True])
    real = torch.zeros(2, 1, 32, 32)
    real[0][masks[0].bool()] = 0.1
    real[1][masks[1].bool()] = 0.5
    ref = lesion_reference(real, masks, lab)
    assert ref is not None and len(ref.tumour_q) == len(ref.ring_q) > 0
    assert ref.tumour_q[0] == pytest.approx(0.1) and ref.tumour_q[-1] == pytest.approx(0.5)
    assert list(ref.tumour_q) == sorted(ref.tumour_q)
    # zero up to the reference's quantile resolution (a 0.4 jump spread over 1/K)
    assert float(lesion_distribution_loss(real, masks, lab, ref)) < 0.4 / REFERENCE_QUANTILES
    assert float(lesion_appearance_loss(real, masks, lab, ref)) == pytest.approx(0.4, abs=1e-6)
    flat = torch.zeros(2, 1, 32, 32)
    flat[masks.bool()] = 0.3
    flat.requires_grad_()
    assert float(lesion_appearance_loss(flat.detach(), masks, lab, ref)) == pytest.approx(
        0, abs=1e-6
    )
    loss = lesion_distribution_loss(flat, masks, lab, ref)
    # half the tumour pixels 0.2 from 0.1, half 0.2 from 0.5; the ring (0) matches
    assert float(loss.detach()) == pytest.approx(0.2, abs=0.4 / REFERENCE_QUANTILES)
    loss.backward()
    assert flat.grad is not None and float(flat.grad[masks.bool()].abs().sum()) > 0
    # unlabelled slices and a reference without quantiles (an older run's) give exact zeros
    none = torch.tensor([False, False])
    assert float(lesion_distribution_loss(flat.detach(), masks, none, ref)) == 0.0
    legacy = LesionReference(ref.tumour, ref.contrast, ref.slices)
    assert float(lesion_distribution_loss(flat.detach(), masks, lab, legacy)) == 0.0
    d = ref.as_dict()
    assert len(d["tumour_quantiles"]) == len(ref.tumour_q) and d["slices"] == 2


def test_terms_are_exact_zeros_but_differentiable_without_masks():
    fake = torch.rand(2, 1, 32, 32, requires_grad=True)
    none = torch.tensor([False, False])
    ref = LesionReference(0.1, 0.2, 3)
    loss = lesion_appearance_loss(fake, _disc_masks(2), none, ref) + masked_seg_loss(
        fake, _disc_masks(2), none
    )
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert fake.grad is not None
    assert lesion_reference(fake.detach(), _disc_masks(2), none) is None


def test_segmentation_consistency_loss_differs_with_the_image_and_reaches_the_input():
    torch.manual_seed(0)
    segs = CycleSegmenters((4, 8))
    masks = _disc_masks(2)
    lab = torch.tensor([True, False])
    a = torch.rand(2, 1, 32, 32, requires_grad=True)
    b = torch.rand(2, 1, 32, 32)
    _, pa = segs(a, a)
    _, pb = segs(b, b)
    la, lb = masked_seg_loss(pa, masks, lab), masked_seg_loss(pb, masks, lab)
    assert float(la.detach()) > 0 and float(la.detach()) != pytest.approx(float(lb.detach()))
    la.backward()
    # only the labelled slice contributes a gradient to the image
    assert float(a.grad[0].abs().sum()) > 0
    assert float(a.grad[1].abs().sum()) == 0.0


@pytest.fixture
def data(simulated):
    """4 + 4 unpaired patients, 2 paired validation and 2 paired test patients, 3 slices
    each, 32 px PNG (shared by the session: read-only)."""
    return simulated(
        mri_patients=4, ct_patients=4, test_patients=2, val_patients=2, slices_per_patient=3
    )


def test_simulator_writes_a_paired_validation_set_disjoint_from_test(data):
    for split in ("paired_val", "paired_test"):
        for sub in ("MR", "CT", "mask"):
            assert any((data / split / sub).iterdir()), (split, sub)
    val = {p.name.split("_")[0] for p in (data / "paired_val" / "CT").iterdir()}
    test = {p.name.split("_")[0] for p in (data / "paired_test" / "CT").iterdir()}
    assert val == {"PV001", "PV002"} and test == {"PT001", "PT002"} and not val & test
    manifest = json.loads((data / "manifest.json").read_text())
    groups = {p["id"]: p["group"] for p in manifest["patients"]}
    assert groups["PV001"] == "paired_val" and groups["PT001"] == "paired_test"
    # the paired validation anatomy is not a copy of a test patient's
    a = (data / "paired_val" / "CT" / "PV001_000.png").read_bytes()
    b = (data / "paired_test" / "CT" / "PT001_000.png").read_bytes()
    assert a != b


def _train(tmp_path, data, name, **over):
    from mrict.translation.config import GanConfig
    from mrict.translation.trainer import train_cyclegan

    small = dict(
        image_size=32,
        ngf=4,
        n_blocks=1,
        ndf=4,
        n_layers_d=2,
        batch_size=2,
        iterations=4,
        checkpoint_every=0,
        log_every=1,
        sample_count=1,
        precision="fp32",
        seg_channels=(4, 8),
    )
    cfg = GanConfig(**(small | over))
    return train_cyclegan(data, tmp_path / name, cfg, progress=False)


def _losses(run):
    import csv

    rows = list(csv.DictReader((run / "losses.csv").open()))
    return {k: [float(r[k]) for r in rows] for k in rows[0]}


def test_tumour_aware_terms_are_logged_and_selection_uses_paired_val(tmp_path, data):
    run = _train(tmp_path, data, "run", select_every=2)
    losses = _losses(run)
    for key in ("seg_mr2ct", "seg_ct2mr", "lesion_mr2ct", "lesion_ct2mr", "S_mr", "S_ct"):
        assert any(v > 0 for v in losses[key]), key
    meta = json.loads((run / "generators.json").read_text())
    sel = meta["meta"]["selection"] if "meta" in meta else meta["selection"]
    assert sel["on"] == "paired_val"
    assert [h["iteration"] for h in sel["history"]] == [2, 4]
    assert sel["iteration"] in (2, 4)
    assert (run / "selection.csv").is_file()
    # the lesion check is recorded for every scoring and for the chosen generators
    for h in sel["history"]:
        assert {"mr2ct_contrast_ratio", "ct2mr_contrast_ratio", "carried"} <= set(h)
    chosen = next(h for h in sel["history"] if h["iteration"] == sel["iteration"])
    assert sel["carried"] == chosen["carried"]
    assert sel["mr2ct_contrast_ratio"] == chosen["mr2ct_contrast_ratio"]


def test_distribution_lesion_term_trains_and_is_logged(tmp_path, data):
    dist = _losses(_train(tmp_path, data, "dist", lesion_term="distribution", iterations=1))
    mean = _losses(_train(tmp_path, data, "mean", lesion_term="mean", iterations=1))
    for key in ("lesion_mr2ct", "lesion_ct2mr"):
        # same seed, weights and first batch: only the form of the term differs
        assert dist[key][0] > 0 and dist[key][0] != pytest.approx(mean[key][0]), key
    assert dist["cycle_mr"][0] == pytest.approx(mean["cycle_mr"][0], rel=1e-5)
    assert "lesion_term: distribution" in (tmp_path / "dist" / "config.yaml").read_text()


def test_training_without_masks_switches_the_terms_off(tmp_path, data):
    import shutil

    data = Path(shutil.copytree(data, tmp_path / "data"))  # the shared set is read-only
    for m in ("MR", "CT"):
        shutil.rmtree(data / m / f"mask_{m}")
    run = _train(tmp_path, data, "run")
    losses = _losses(run)
    for key in ("seg_mr2ct", "seg_ct2mr", "lesion_mr2ct", "lesion_ct2mr", "S_mr", "S_ct"):
        assert all(v == 0.0 for v in losses[key]), key
    assert all(np.isfinite(losses["G_total"]))


def test_source_masks_only_turns_the_lesion_term_off(tmp_path, data):
    run = _train(tmp_path, data, "run", use_target_masks=False, lambda_lesion=1.0)
    losses = _losses(run)
    assert all(v == 0.0 for v in losses["lesion_mr2ct"] + losses["lesion_ct2mr"])
    assert any(v > 0 for v in losses["seg_mr2ct"])


def test_linear_ct_map_run_translates_in_default_units(tmp_path, data):
    """A run trained with the linear map is seen through the default map by every caller."""
    from mrict.translation.translate import CtMapAdapter, load_generators

    run = _train(tmp_path, data, "run", ct_map="linear", lambda_seg=0.0, lambda_lesion=0.0)
    gens = load_generators(run)
    assert isinstance(gens["mr2ct"], CtMapAdapter) and gens["mr2ct"].image_size == 32
    with torch.no_grad():
        y = gens["mr2ct"](torch.zeros(1, 1, 32, 32))
    assert y.shape == (1, 1, 32, 32) and float(y.abs().max()) <= 1.0


def test_bone_window_discriminator_sees_bone_as_its_own_channel():
    from mrict.data.intensity import hu_to_unit
    from mrict.translation.networks import CycleDiscriminators, bone_window

    hu = torch.tensor([-1000.0, 30.0, 200.0, 1100.0, 2000.0, 2800.0]).view(1, 1, 1, 6)
    w = bone_window(hu_to_unit(hu, "soft_tissue"), "soft_tissue")
    assert w.flatten().tolist() == pytest.approx([-1, -1, -1, 0, 1, 1], abs=1e-5)
    # the same HU in the linear map give the same window
    assert torch.allclose(bone_window(hu_to_unit(hu, "linear"), "linear"), w, atol=1e-5)
    d = init_weights(CycleDiscriminators(4, 2, "soft_tissue"))
    assert d.d_ct.arch["in_ch"] == 2 and d.d_mr.arch["in_ch"] == 1
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    s_mr, s_ct = d(x, x)
    assert s_ct.shape == s_mr.shape == CycleDiscriminators(4, 2)(x, x)[1].shape
    # the generator's CT gets a gradient through the window too
    x.requires_grad_(True)
    d(x, x)[1].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_bone_window_option_trains(tmp_path, data):
    run = _train(tmp_path, data, "bone", d_bone_window=True, iterations=1)
    assert "d_bone_window: true" in (run / "config.yaml").read_text()
    assert np.isfinite(_losses(run)["D_ct"]).all()
