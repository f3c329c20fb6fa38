"""Shapes of the networks and the behaviour of every loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mrict.errors import MrictError
from mrict.translation.losses import (
    PretrainedFeatureLoss,
    Resnet50Features,
    Vgg16Features,
    l1_loss,
    lsgan_loss,
    mind,
    mind_loss,
    ssim_loss,
)
from mrict.translation.networks import (
    PatchDiscriminator,
    ResnetGenerator,
    build_models,
)
from mrict.translation.pool import ImagePool


def _images(seed: int, n: int = 2, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    blob = (xx**2 + yy**2 < 0.5).float()
    return (blob * 1.2 - 0.6 + 0.2 * torch.rand(n, 1, size, size, generator=g)).clamp(-1, 1)


def test_generator_keeps_shape_and_range() -> None:
    g = ResnetGenerator(ngf=4, n_blocks=2)
    x = _images(0, 3, 32)
    y = g(x)
    assert y.shape == x.shape
    assert y.min() >= -1 and y.max() <= 1


def test_patch_discriminator_scores_patches() -> None:
    d = PatchDiscriminator(ndf=4, n_layers=3)
    scores = d(torch.zeros(2, 1, 64, 64))
    # three stride-2 convs then two stride-1 4x4 convs: 64 -> 8 -> 7 -> 6
    assert scores.shape == (2, 1, 6, 6)


def test_default_architecture_and_init() -> None:
    g = ResnetGenerator()
    assert g.arch["ngf"] == 64 and g.arch["n_blocks"] == 9
    assert any(isinstance(m, torch.nn.ReflectionPad2d) for m in g.modules())
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in g.modules())
    torch.manual_seed(0)
    gens, _ = build_models(16, 2, 16, 3)
    w = torch.cat([m.weight.flatten() for m in gens.modules() if isinstance(m, torch.nn.Conv2d)])
    w = w.detach()
    assert abs(float(w.mean())) < 0.002
    assert 0.018 < float(w.std()) < 0.022


def _check_loss(fn, a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    assert float(fn(a, a.clone())) <= tol
    b = b.clone().requires_grad_(True)
    value = fn(a, b)
    assert float(value.detach()) > 10 * tol
    value.backward()
    assert b.grad is not None and float(b.grad.abs().sum()) > 0


def test_lsgan_loss() -> None:
    ones, zeros = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    assert float(lsgan_loss(ones, True)) == 0 and float(lsgan_loss(zeros, False)) == 0
    s = torch.full((2, 1, 4, 4), 0.3, requires_grad=True)
    loss = lsgan_loss(s, True)
    assert abs(float(loss.detach()) - 0.49) < 1e-6
    loss.backward()
    assert float(s.grad.abs().sum()) > 0


@pytest.mark.parametrize("fn", [l1_loss, ssim_loss, mind_loss], ids=["l1", "ssim", "mind"])
def test_image_losses_zero_on_identical_positive_on_different(fn) -> None:
    _check_loss(fn, _images(1), _images(2).flip(-1) * 0.5)


def test_mind_is_invariant_to_affine_intensity_changes() -> None:
    x = _images(3)
    other = _images(4).roll(5, dims=-1)
    for a, b in ((2.5, 0.3), (-1.0, 0.0), (0.2, -0.7)):
        assert float(mind_loss(x, a * x + b)) < 1e-3
    assert float(mind_loss(x, other)) > 0.02
    desc = mind(x)
    assert desc.shape == (2, 8, 32, 32)
    assert float(desc.max()) <= 1.0 + 1e-6 and float(desc.min()) > 0


def _random_state(net: torch.nn.Module, extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The module's own (random, default-initialised) weights plus ``extra`` keys."""
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state.update(extra)
    return state


def test_vgg16_feature_loss_from_local_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # torchvision's VGG16 layout, including layers past relu3_3 and the classifier
    state = _random_state(
        Vgg16Features(),
        {"features.17.weight": torch.zeros(512, 256, 3, 3), "classifier.0.bias": torch.zeros(4096)},
    )
    path = tmp_path / "vgg16.safetensors"
    save_file(state, str(path))
    loss = PretrainedFeatureLoss("vgg16", path)
    assert not any(p.requires_grad for p in loss.parameters())
    _check_loss(loss, _images(5), _images(6).flip(-2), tol=1e-6)


def test_resnet50_feature_loss_from_local_pth(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = _random_state(Resnet50Features(), {"fc.weight": torch.zeros(1000, 2048)})
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    with pytest.raises(MrictError, match="feature_weights_allow_pickle"):
        PretrainedFeatureLoss("resnet50", path)  # a pickle needs the explicit option
    loss = PretrainedFeatureLoss("resnet50", path, allow_pickle=True)
    loss.train()
    assert not loss.net.training  # batch-norm statistics stay frozen
    _check_loss(loss, _images(7), _images(8).flip(-1), tol=1e-6)


def test_feature_loss_refuses_missing_or_wrong_weights(tmp_path: Path) -> None:
    with pytest.raises(MrictError, match="not found"):
        PretrainedFeatureLoss("vgg16", tmp_path / "absent.safetensors")
    with pytest.raises(MrictError, match="needs a local weights file"):
        PretrainedFeatureLoss("vgg16", None)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"features.0.weight": torch.zeros(8, 3, 3, 3)}, str(wrong))
    with pytest.raises(MrictError, match="do not fit"):
        PretrainedFeatureLoss("vgg16", wrong)


def test_image_pool_fills_then_swaps_and_round_trips() -> None:
    pool = ImagePool(3, seed=0)
    first = torch.arange(3.0).view(3, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: returns the new images
    state = pool.state_dict()
    twin = ImagePool(1, seed=99)
    twin.load_state_dict(state)
    batch = torch.full((8, 1, 1, 1), 10.0)
    a, b = pool.query(batch), twin.query(batch)
    assert torch.equal(a, b)
    assert set(a.flatten().tolist()) - {10.0}  # some stored images came back
    assert ImagePool(0).query(batch) is not None
