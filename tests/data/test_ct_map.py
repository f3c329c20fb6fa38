"""The CT network maps: exact inverse, soft-tissue share, numpy/torch agreement, HU-exact output."""

import numpy as np
import pytest
import torch

from mrict.data.intensity import (
    CT_MAPS,
    DEFAULT_CT_MAP,
    HU_MAX,
    HU_MIN,
    hu_to_01,
    hu_to_unit,
    remap_ct,
    unit_to_hu,
)


@pytest.mark.parametrize("name", sorted(CT_MAPS))
def test_every_map_is_exactly_invertible_and_monotone(name):
    hu = np.linspace(HU_MIN, HU_MAX, 40241)
    unit = hu_to_unit(hu, name)
    assert unit[0] == -1.0 and unit[-1] == 1.0
    assert np.all(np.diff(unit) > 0)
    np.testing.assert_allclose(unit_to_hu(unit, name), hu, atol=1e-9)
    # outside the range: clipped, never extrapolated
    assert hu_to_unit(np.array([-3000.0, 9000.0]), name).tolist() == [-1.0, 1.0]
    assert unit_to_hu(np.array([-1.5, 1.5]), name).tolist() == [HU_MIN, HU_MAX]


def test_default_map_gives_the_brain_half_of_the_range():
    assert DEFAULT_CT_MAP == "soft_tissue"
    lo, hi = hu_to_unit(np.array([-100.0, 200.0]))
    assert hi - lo == pytest.approx(1.0)
    # a 50 HU tumour contrast: 1/6 unit, about 7x the linear map's 0.025
    contrast = np.diff(hu_to_unit(np.array([30.0, 80.0])))[0]
    linear = np.diff(hu_to_unit(np.array([30.0, 80.0]), "linear"))[0]
    assert contrast == pytest.approx(50 / 300)
    assert linear == pytest.approx(100 / 4024)
    # hand-computed knots: -100 HU -> -0.7, 200 HU -> 0.3, 1188 HU -> 0.3 + 988 / 2800 * 0.7
    np.testing.assert_allclose(
        hu_to_unit(np.array([-1024.0, -100.0, 200.0, 1188.0, 3000.0])),
        [-1.0, -0.7, 0.3, 0.3 + 988 / 2800 * 0.7, 1.0],
    )


def test_torch_and_numpy_agree_and_keep_dtype_and_gradients():
    hu = np.linspace(-1100, 3100, 1001).astype(np.float32)
    t = torch.from_numpy(hu).requires_grad_()
    u = hu_to_unit(t)
    np.testing.assert_allclose(u.detach().numpy(), hu_to_unit(hu), atol=1e-6)
    assert u.dtype == torch.float32 and hu_to_unit(hu).dtype == np.float32
    u.sum().backward()
    # slope inside the brain range is 1/300 per HU
    k = int(np.argmin(np.abs(hu - 40)))
    assert t.grad[k].item() == pytest.approx(1 / 300, rel=1e-5)
    back = unit_to_hu(u.detach())
    np.testing.assert_allclose(back.numpy(), np.clip(hu, HU_MIN, HU_MAX), atol=2e-3)


def test_remap_and_metric_window_do_not_depend_on_the_network_map():
    hu = np.array([-1024.0, -100.0, 40.0, 700.0, 3000.0])
    lin = hu_to_unit(hu, "linear")
    np.testing.assert_allclose(remap_ct(lin, "linear", "soft_tissue"), hu_to_unit(hu), atol=1e-9)
    assert remap_ct(lin, "linear", "linear") is lin
    np.testing.assert_allclose(hu_to_01(hu), (hu + 1024) / 4024)
    with pytest.raises(ValueError, match="unknown CT map"):
        hu_to_unit(hu, "nope")


def test_written_ct_is_hu_exact_through_the_network_map(tmp_path):
    """A CT slice read, mapped to the network range and written back keeps its HU."""
    from mrict.data.datasets import normalise
    from mrict.data.io import read_slices, write_dicom
    from mrict.translation.translate import unit_to_native

    rng = np.random.default_rng(0)
    hu = np.rint(rng.uniform(-1024, 3000, size=(16, 16))).astype(np.float32)
    write_dicom(tmp_path / "a.dcm", hu, modality="CT", patient_id="P1")
    (s,) = read_slices(tmp_path / "a.dcm", "CT")
    unit, _ = normalise(s.pixels, "CT")
    np.testing.assert_allclose(unit_to_native(unit, "CT", None), hu, atol=0.01)
    write_dicom(
        tmp_path / "b.dcm", unit_to_native(unit, "CT", None), modality="CT", patient_id="P1"
    )
    (s2,) = read_slices(tmp_path / "b.dcm", "CT")
    np.testing.assert_array_equal(s2.pixels, hu)
