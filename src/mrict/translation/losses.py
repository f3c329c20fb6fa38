"""CycleGAN losses on (B, 1, H, W) images in [-1, 1].

Least-squares adversarial, cycle and identity L1, SSIM on the cycle reconstruction (data
range 2 for [-1, 1] images) and a feature-adaptation loss between an image and its
translation: MIND descriptors (no weights), or a frozen VGG16/ResNet50 read from a local
torchvision-compatible weights file (never downloaded).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mrict.errors import MrictError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def lsgan_loss(scores: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean (D(x) - 1)^2 for real targets, mean D(x)^2 for fake."""
    target = torch.ones_like(scores) if real else torch.zeros_like(scores)
    return F.mse_loss(scores.float(), target.float())


def l1_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference (cycle and identity losses)."""
    return F.l1_loss(a.float(), b.float())


def _gaussian_1d(size: int, sigma: float) -> tuple[float, ...]:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return tuple((g / g.sum()).tolist())


def _band(n: int, taps: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """(n, n - k + 1) fp32 matrix M with ``M[j + t, j] = taps[t]``: ``x @ M`` is the valid
    correlation of the last axis of ``x`` with ``taps``."""
    k = len(taps)
    m = torch.zeros(n, n - k + 1, dtype=torch.float32)
    cols = torch.arange(n - k + 1)
    for t, w in enumerate(taps):
        m[cols + t, cols] = w
    return m.to(device)


_BANDS: dict[tuple[int, tuple[float, ...], str], torch.Tensor] = {}


def separable_filter(x: torch.Tensor, taps: tuple[float, ...]) -> torch.Tensor:
    """Valid 2-D filtering of (..., H, W) fp32 maps with the separable kernel
    ``taps[:, None] * taps[None, :]`` -> (..., H - k + 1, W - k + 1).

    Two matrix multiplications with banded matrices: the same values as a k x k
    ``conv2d``, without the single-channel convolution that oneDNN runs at a few percent
    of peak (forward and backward about 20x faster on CPU for an 11x11 SSIM window).
    """
    h, w = x.shape[-2:]
    bands = []
    for n in (w, h):
        key = (n, taps, str(x.device))
        band = _BANDS.get(key)
        if band is None:
            band = _BANDS.setdefault(key, _band(n, taps, x.device))
        bands.append(band)
    return torch.matmul(bands[1].t(), torch.matmul(x, bands[0]))


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 2.0,
    win_size: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Mean SSIM of (B, 1, H, W) images (Gaussian window, valid region, population
    covariance, K1 0.01, K2 0.03). ``data_range`` 2 for [-1, 1] images, 1 for [0, 1]."""
    x, y = x.float(), y.float()
    taps = _gaussian_1d(min(win_size, x.shape[-1], x.shape[-2]), sigma)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    # the five local moments in one filtering pass: (B, 5, H', W')
    moments = separable_filter(torch.cat([x, y, x * x, y * y, x * y], dim=1), taps)
    mu_x, mu_y, exx, eyy, exy = moments.unbind(dim=1)
    sxx = exx - mu_x**2
    syy = eyy - mu_y**2
    sxy = exy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).mean()


def ssim_loss(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """1 - SSIM(x, y); 0 for identical images."""
    return 1.0 - ssim(x, y, data_range)


# MIND: 8 neighbours at distance 1 (4 axial + 4 diagonal)
_MIND_OFFSETS = ((0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[..., i, j] = x[..., i + dy, j + dx]`` with replicated borders (|dy|, |dx| <= 1)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]


def mind(x: torch.Tensor, sigma: float = 0.8, radius: int = 2) -> torch.Tensor:
    """MIND descriptor (Heinrich et al. 2012) of (B, 1, H, W) -> (B, 8, H, W) in (0, 1].

    Patch distances to the 8 neighbours (Gaussian-weighted squared differences), divided by
    their local mean (the variance estimate), through exp(-.) and normalised by the maximum.
    Invariant to affine intensity changes ``a * x + b`` (a != 0), so images of different
    modalities with the same structure have similar descriptors.
    """
    x = x.float()
    taps = _gaussian_1d(2 * radius + 1, sigma)
    diffs = torch.cat([(x - _shift(x, dy, dx)) ** 2 for dy, dx in _MIND_OFFSETS], dim=1)
    dist = separable_filter(F.pad(diffs, (radius,) * 4, mode="replicate"), taps)
    var = dist.mean(dim=1, keepdim=True)
    # relative floor: keeps the scale invariance and avoids 0/0 in flat regions
    floor = var.mean(dim=(2, 3), keepdim=True) * 1e-2 + 1e-12
    var = var.clamp_min(0) + floor
    desc = torch.exp(-dist / var)
    return desc / desc.amax(dim=1, keepdim=True)


def mind_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between the MIND descriptors of ``a`` and ``b``."""
    return (mind(a) - mind(b)).abs().mean()


# ---- pretrained extractors, built with torchvision's module names so its files load ----

_VGG16_CONVS = (64, 64, "M", 128, 128, "M", 256, 256, 256)  # up to relu3_3


class Vgg16Features(nn.Module):
    """VGG16 ``features`` up to relu3_3 (torchvision key layout ``features.N.weight``)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = 3
        for v in _VGG16_CONVS:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(ch, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                ch = int(v)
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class _Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int, downsample: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
            if downsample
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


class Resnet50Features(nn.Module):
    """ResNet50 stem, layer1 and layer2 (torchvision key layout); output stride 8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(
            _Bottleneck(64, 64, 1, True),
            _Bottleneck(256, 64, 1, False),
            _Bottleneck(256, 64, 1, False),
        )
        self.layer2 = nn.Sequential(
            _Bottleneck(256, 128, 2, True), *[_Bottleneck(512, 128, 1, False) for _ in range(3)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer2(self.layer1(x))


#: the option that lets :func:`read_weights` open a pickle-based (.pth/.pt) file
ALLOW_PICKLE_OPTION = (
    "feature_weights_allow_pickle: true (train-gan --feature-weights-allow-pickle)"
)


def read_weights(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file: safetensors, or (only with ``allow_pickle``) a
    .pth/.pt read with ``torch.load(weights_only=True)``, whose restricted unpickler
    refuses anything but tensors and plain containers, so a malicious pickle is reported,
    never executed. Never downloads anything."""
    path = Path(path)
    if not path.is_file():
        raise MrictError("feature-loss weights file not found", path)
    if path.suffix not in (".safetensors", ".pth", ".pt"):
        raise MrictError("weights must be a .safetensors or .pth file", path)
    if path.suffix != ".safetensors" and not allow_pickle:
        raise MrictError(
            "refusing to read a pickle-based weights file (it could run code); convert it to "
            f"safetensors, or set {ALLOW_PICKLE_OPTION} to read it with "
            "torch.load(weights_only=True)",
            path,
        )
    if path.suffix != ".safetensors":
        from mrict.runtime.checkpoint import load_weights

        state: object = load_weights(path, allow_pickle=True)[0]
    else:
        try:
            from safetensors.torch import load_file

            state = load_file(str(path))
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            raise MrictError(
                f"cannot read weights ({exc.__class__.__name__}: {first})", path
            ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MrictError("weights file does not hold a state dict", path)
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


class PretrainedFeatureLoss(nn.Module):
    """L1 between frozen features of an image and of its translation.

    Grayscale [-1, 1] -> [0, 1], replicated to 3 channels, ImageNet-normalised.
    """

    def __init__(self, arch: str, weights: str | Path | None, allow_pickle: bool = False) -> None:
        super().__init__()
        if weights is None:
            raise MrictError(
                f"feature loss {arch!r} needs a local weights file (set feature_weights); "
                "mrict never downloads weights"
            )
        if arch == "vgg16":
            net: nn.Module = Vgg16Features()
        elif arch == "resnet50":
            net = Resnet50Features()
        else:
            raise MrictError(
                f"unknown feature extractor {arch!r} (use mind, vgg16, resnet50, none)"
            )
        state = read_weights(weights, allow_pickle=allow_pickle)
        own = net.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise MrictError(
                f"weights do not fit torchvision {arch}: missing {missing[:3]}", weights
            )
        for k, v in own.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise MrictError(
                    f"weights do not fit torchvision {arch}: {k} has shape {tuple(state[k].shape)}",
                    weights,
                )
        net.load_state_dict({k: state[k] for k in own})
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> PretrainedFeatureLoss:
        super().train(mode)
        self.net.eval()  # batch-norm statistics stay frozen
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x.float() + 1.0) * 0.5).clamp(0, 1).expand(-1, 3, -1, -1)
        return self.net((x - self.mean) / self.std)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (self.features(a) - self.features(b)).abs().mean()


class MindLoss(nn.Module):
    """:func:`mind_loss` as a module."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return mind_loss(a, b)


def build_feature_loss(
    kind: str, weights: str | Path | None = None, allow_pickle: bool = False
) -> nn.Module | None:
    """The feature-adaptation loss module for ``kind`` (None for ``"none"``);
    ``allow_pickle`` lets a .pth/.pt ``weights`` file be read (see :func:`read_weights`)."""
    if kind == "none":
        return None
    if kind == "mind":
        return MindLoss()
    return PretrainedFeatureLoss(kind, weights, allow_pickle)
