"""CycleGAN networks: ResNet generator and 70x70 PatchGAN discriminator, N(0, 0.02) init."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with reflection padding and instance norm, plus the skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


Upsample = Literal["resize", "transpose"]


def upsampling(ch_in: int, ch_out: int, mode: Upsample) -> list[nn.Module]:
    """A x2 upsampling layer: ``"resize"`` is bilinear resizing followed by a reflection-
    padded 3x3 convolution (no checkerboard artefacts: every output pixel sees the same
    number of kernel taps); ``"transpose"`` is the reference CycleGAN's stride-2 transposed
    convolution."""
    if mode == "resize":
        return [
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.ReflectionPad2d(1),
            nn.Conv2d(ch_in, ch_out, 3),
        ]
    if mode == "transpose":
        return [nn.ConvTranspose2d(ch_in, ch_out, 3, stride=2, padding=1, output_padding=1)]
    raise ValueError(f"unknown upsampling {mode!r} (resize or transpose)")


class ResnetGenerator(nn.Module):
    """(B, in_ch, H, W) in [-1, 1] -> (B, out_ch, H, W) in [-1, 1] (tanh); H, W divisible by 4.

    7x7 stem, two stride-2 downsamplings, ``n_blocks`` residual blocks at ``4 * ngf``
    channels, two x2 upsamplings (``upsample``: resize + convolution by default, or the
    reference's transposed convolution, see :func:`upsampling`), 7x7 head; reflection
    padding and instance norm (no affine parameters) throughout.
    """

    def __init__(
        self,
        in_ch: int = 1,
        out_ch: int = 1,
        ngf: int = 64,
        n_blocks: int = 9,
        *,
        upsample: Upsample = "resize",
    ) -> None:
        super().__init__()
        self.arch = {
            "in_ch": in_ch,
            "out_ch": out_ch,
            "ngf": ngf,
            "n_blocks": n_blocks,
            "upsample": upsample,
        }
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_ch, ngf, 7),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(inplace=True),
        ]
        ch = ngf
        for _ in range(2):
            layers += [
                nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1),
                nn.InstanceNorm2d(ch * 2),
                nn.ReLU(inplace=True),
            ]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [
                *upsampling(ch, ch // 2, upsample),
                nn.InstanceNorm2d(ch // 2),
                nn.ReLU(inplace=True),
            ]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, out_ch, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: (B, in_ch, H, W) -> (B, 1, H', W') real/fake scores per 70x70 patch
    (``n_layers=3``); instance norm, LeakyReLU 0.2, no sigmoid (least-squares loss)."""

    def __init__(self, in_ch: int = 1, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        self.arch = {"in_ch": in_ch, "ndf": ndf, "n_layers": n_layers}
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2, padding=1),
                nn.InstanceNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1),
            nn.InstanceNorm2d(ndf * mult),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """Convolutions ~ N(0, gain), biases 0 (the reference CycleGAN initialisation)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class CycleGenerators(nn.Module):
    """Both generators; one forward computes every image the generator losses need, so
    DistributedDataParallel sees a single forward per step."""

    def __init__(self, ngf: int, n_blocks: int, upsample: Upsample = "resize") -> None:
        super().__init__()
        self.mr2ct = ResnetGenerator(1, 1, ngf, n_blocks, upsample=upsample)
        self.ct2mr = ResnetGenerator(1, 1, ngf, n_blocks, upsample=upsample)

    def forward(
        self, real_mr: torch.Tensor, real_ct: torch.Tensor, identity: bool = True
    ) -> dict[str, torch.Tensor]:
        fake_ct = self.mr2ct(real_mr)
        fake_mr = self.ct2mr(real_ct)
        out = {
            "fake_ct": fake_ct,
            "rec_mr": self.ct2mr(fake_ct),
            "fake_mr": fake_mr,
            "rec_ct": self.mr2ct(fake_mr),
        }
        if identity:
            out["idt_ct"] = self.mr2ct(real_ct)
            out["idt_mr"] = self.ct2mr(real_mr)
        return out


#: the bone window a CT discriminator may see beside the image: HU in [200, 2000] -> [-1, 1]
BONE_WINDOW_HU = (200.0, 2000.0)


def bone_window(ct: torch.Tensor, ct_map: str) -> torch.Tensor:
    """(B, 1, H, W) CT in the network map ``ct_map`` -> the same slices through
    :data:`BONE_WINDOW_HU` in [-1, 1] (soft tissue and air -1, dense bone 1), in fp32."""
    from mrict.data.intensity import unit_to_hu

    lo, hi = BONE_WINDOW_HU
    hu = unit_to_hu(ct.float().clamp(-1, 1), ct_map)
    return ((hu - lo) / (hi - lo)).clamp(0, 1) * 2 - 1


class CycleDiscriminators(nn.Module):
    """Both discriminators: ``d_mr`` judges MR images, ``d_ct`` judges CT images. With
    ``ct_bone_window`` (the CT network map's name) ``d_ct`` sees two channels, the image
    and its :func:`bone_window`, so that bone intensity errors, which the soft-tissue map
    compresses, are as visible to it as soft-tissue ones."""

    def __init__(self, ndf: int, n_layers: int, ct_bone_window: str | None = None) -> None:
        super().__init__()
        self.ct_bone_window = ct_bone_window
        self.d_mr = PatchDiscriminator(1, ndf, n_layers)
        self.d_ct = PatchDiscriminator(2 if ct_bone_window else 1, ndf, n_layers)

    def forward(self, mr: torch.Tensor, ct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ct_bone_window:
            ct = torch.cat([ct, bone_window(ct, self.ct_bone_window).to(ct.dtype)], dim=1)
        return self.d_mr(mr), self.d_ct(ct)


def build_models(
    ngf: int,
    n_blocks: int,
    ndf: int,
    n_layers_d: int,
    upsample: Upsample = "resize",
    ct_bone_window: str | None = None,
) -> tuple[CycleGenerators, CycleDiscriminators]:
    """Freshly initialised generators and discriminators (uses the global torch RNG)."""
    gens = init_weights(CycleGenerators(ngf, n_blocks, upsample))
    discs = init_weights(CycleDiscriminators(ndf, n_layers_d, ct_bone_window))
    return gens, discs  # type: ignore[return-value]
