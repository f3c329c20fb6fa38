"""Render tissue fractions into MRI (signal equations) and CT (Hounsfield units).

Each pixel is the fraction-weighted mix of its tissues' values (partial volume), each
tissue's value modulated by the patient's fine and coarse texture fields.
MRI: spin-echo ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)`` for T1- and T2-weighted images,
inversion recovery ``S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)`` for FLAIR (TI
chosen to null CSF), then the scanner's blur, a smooth multiplicative bias field and Rician
noise. CT: per-tissue HU, beam hardening next to bone, scanner blur (Gaussian PSF) and
correlated noise with a filtered-back-projection-like noise power spectrum
``NPS(f) ~ f exp(-(f/f0)^2)`` whose level falls with slice thickness (``~ 1/sqrt(t)``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

import numpy as np
from scipy import ndimage as ndi

from mrict.phantom.atlas import (
    CSF,
    DIPLOE,
    GM,
    INNER_TABLE,
    N_LABELS,
    NECROSIS,
    OEDEMA,
    OUTER_TABLE,
    TUMOUR,
    WM,
)
from mrict.phantom.texture import upsample
from mrict.phantom.tissues import (
    CT_TEXTURE_HU,
    HU_RANGES,
    MR_TEXTURE,
    sample_ct_tissues,
    sample_mr_tissues,
)

MRContrast = Literal["t1c", "t1", "t2", "flair"]
MR_CONTRASTS = ("t1c", "t1", "t2", "flair")
#: gadolinium relaxivity r1 (1/(mM s)) at 1.5 T and the concentration reached in enhancing
#: (blood-brain-barrier-disrupted) tumour, mM; Rohrer et al., Invest Radiol 2005;40:715
GD_R1 = 4.3
GD_TUMOUR_MM = (0.3, 0.6)


def sample_mr_protocol(
    rng: np.random.Generator, contrast: MRContrast, size: int, enhancing: bool = True
) -> dict[str, Any]:
    """Acquisition settings for one patient, varied within clinical ranges (ms);
    ``enhancing``: whether the patient's lesion takes up gadolinium (T1c)."""
    tissues = sample_mr_tissues(rng)
    conc = rng.uniform(*GD_TUMOUR_MM)
    if contrast == "t1c" and enhancing:
        # post-contrast T1: gadolinium shortens T1 of the solid tumour (1/T1 += r1 C)
        tissues["T1"][TUMOUR] = 1.0 / (1.0 / tissues["T1"][TUMOUR] + GD_R1 * conc / 1000.0)
    if contrast in ("t1", "t1c"):
        seq = {"sequence": "SE", "TR": rng.uniform(400, 650), "TE": rng.uniform(8, 18)}
    elif contrast == "t2":
        seq = {"sequence": "SE", "TR": rng.uniform(3000, 5000), "TE": rng.uniform(80, 110)}
    elif contrast == "flair":
        tr = rng.uniform(8000, 10000)
        t1_csf = tissues["T1"][CSF]
        # null CSF: 1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0
        ti = -t1_csf * np.log((1 + np.exp(-tr / t1_csf)) / 2)
        seq = {"sequence": "IR", "TR": tr, "TE": rng.uniform(90, 130), "TI": ti}
    else:
        raise ValueError(f"unknown MR contrast {contrast!r}")
    return {
        **seq,
        "contrast": contrast,
        "tissues": {k: v.tolist() for k, v in tissues.items()},
        "gain": rng.uniform(1500, 3000),
        "noise_fraction": rng.uniform(0.015, 0.035),  # of the white-matter signal
        "bias_amplitude": rng.uniform(0.05, 0.2),
        "bias_coarse": rng.uniform(-1, 1, (4, 4)).tolist(),
        "blur_px": rng.uniform(0.4, 0.8) * size / 256,
        "texture": (MR_TEXTURE * rng.uniform(0.7, 1.3)).tolist(),
    }


def tissue_signal(protocol: dict[str, Any]) -> np.ndarray:
    """MR signal per label (N_LABELS,) from the signal equation, before gain."""
    t1, t2, pd = (np.asarray(protocol["tissues"][k]) for k in ("T1", "T2", "PD"))
    tr, te = protocol["TR"], protocol["TE"]
    if protocol["sequence"] == "IR":
        ti = protocol["TI"]
        mz = np.abs(1 - 2 * np.exp(-ti / t1) + np.exp(-tr / t1))
    else:
        mz = 1 - np.exp(-tr / t1)
    signal = pd * mz * np.exp(-te / t2)
    signal[0] = 0.0  # air
    return signal


def bias_field(protocol: dict[str, Any], size: int) -> np.ndarray:
    coarse = np.asarray(protocol["bias_coarse"])
    field = upsample(coarse, (size, size))
    return 1.0 + protocol["bias_amplitude"] * field


def _mix(fractions: np.ndarray, texture: np.ndarray, values: np.ndarray, amplitude: np.ndarray):
    """Fraction-weighted tissue values with texture: ``sum_l f_l v_l (1 + a_l T)`` for
    ``fractions`` (12, H, W), ``texture`` (2, H, W) fine and coarse unit fields, ``values``
    (12,) and ``amplitude`` (12, 2) absolute texture s.d. per tissue; (H, W) float32."""
    f = fractions.reshape(N_LABELS, -1).astype(np.float32, copy=False)
    t = texture.reshape(2, -1).astype(np.float32, copy=False)
    values = np.asarray(values, np.float32)
    amplitude = np.asarray(amplitude, np.float32)
    # explicit sums, not a BLAS product: rendering runs in several processes at once and
    # multi-threaded BLAS calls would oversubscribe the cores
    img = np.zeros(f.shape[1], np.float32)
    fine = np.zeros_like(img)
    coarse = np.zeros_like(img)
    for label in range(N_LABELS):
        if values[label] != 0:
            img += values[label] * f[label]
        if amplitude[label, 0] != 0:
            fine += amplitude[label, 0] * f[label]
        if amplitude[label, 1] != 0:
            coarse += amplitude[label, 1] * f[label]
    img += t[0] * fine + t[1] * coarse
    return img.reshape(fractions.shape[1:])


def render_mri(
    fractions: np.ndarray,
    texture: np.ndarray,
    protocol: dict[str, Any],
    rng: np.random.Generator,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """Tissue ``fractions`` (12, H, W) and ``texture`` (2, H, W) -> (H, W) float32 MR
    magnitude image (scanner units, >= 0)."""
    signal = tissue_signal(protocol)
    relative = np.asarray(protocol["texture"])
    img = _mix(fractions, texture, signal, signal[:, None] * relative)
    np.maximum(img, 0.0, out=img)
    img = ndi.gaussian_filter(img, protocol["blur_px"])
    if bias is None:
        bias = bias_field(protocol, fractions.shape[-1])
    img *= bias.astype(np.float32)
    sigma = np.float32(protocol["noise_fraction"] * signal[WM])
    noise = rng.standard_normal((2, *img.shape), dtype=np.float32)
    noise *= sigma
    real = img + noise[0]
    imag = noise[1]
    return (np.sqrt(real * real + imag * imag) * np.float32(protocol["gain"])).astype(np.float32)


def sample_ct_protocol(
    rng: np.random.Generator,
    size: int,
    contrast: bool = True,
    *,
    thickness_mm: float = 3.0,
    enhancing: bool = True,
) -> dict[str, Any]:
    """Per-patient CT tissue values (HU) and scanner settings; ``contrast``: after iodinated
    contrast (an ``enhancing`` solid tumour enhances), else non-contrast (tumour iso- to
    hypodense). The noise s.d. is drawn for a 512-matrix reconstruction (0.45 mm pixels) of
    5 mm slices and scaled by ``sqrt(5 mm / t)`` and by the pixel size, as if that
    reconstruction were averaged down to ``size`` pixels (``0.45 mm / pixel``)."""
    hu = sample_ct_tissues(rng, contrast)
    if not enhancing:
        hu[TUMOUR] = rng.uniform(*HU_RANGES[TUMOUR])
    return {
        "contrast": bool(contrast),
        "hu": hu.tolist(),
        "noise_hu": float(rng.uniform(3.0, 5.5) * np.sqrt(5.0 / thickness_mm) * size / 512),
        "psf_px": rng.uniform(0.5, 0.9) * size / 256,
        "nps_peak": rng.uniform(0.15, 0.3),  # cycles/pixel of the noise power peak
        "texture_hu": (CT_TEXTURE_HU * rng.uniform(0.7, 1.3)).tolist(),
        "beam_hardening_hu": rng.uniform(0.0, 8.0),
        "beam_hardening_mm": rng.uniform(3.0, 6.0),
    }


@lru_cache(maxsize=8)
def _noise_filter(shape: tuple[int, int], peak: float) -> np.ndarray:
    """Amplitude filter ``sqrt(NPS)`` on the rfft2 grid of ``shape``, NPS ~ f exp(-(f/peak)^2)."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    f = np.hypot(fy, fx)
    return np.sqrt(f * np.exp(-((f / peak) ** 2)))


def _correlated_noise(rng: np.random.Generator, shape: tuple[int, int], peak: float) -> np.ndarray:
    """Unit-variance noise whose power spectrum rises like a ramp and rolls off (FBP-like)."""
    white = rng.standard_normal(shape)
    noise = np.fft.irfft2(np.fft.rfft2(white) * _noise_filter(tuple(shape), float(peak)), s=shape)
    return noise / max(noise.std(), 1e-12)


def render_ct(
    fractions: np.ndarray,
    texture: np.ndarray,
    protocol: dict[str, Any],
    rng: np.random.Generator,
    pixel_mm: float,
) -> np.ndarray:
    """Tissue ``fractions`` (12, H, W) and ``texture`` (2, H, W) -> (H, W) int16 CT image
    in HU; ``pixel_mm``: pixel size (for the beam-hardening reach)."""
    hu = np.asarray(protocol["hu"], dtype=np.float32)
    assert hu.shape == (N_LABELS,)
    f = fractions.astype(np.float32, copy=False)
    img = _mix(f, texture, hu, np.asarray(protocol["texture_hu"]))
    # beam hardening: brain next to the skull reads a few HU high
    bone = f[OUTER_TABLE] + f[DIPLOE] + f[INNER_TABLE]
    # a triangular falloff (two box filters: cheap at any reach)
    width = 2 * int(round(protocol["beam_hardening_mm"] / pixel_mm)) + 1
    near_bone = ndi.uniform_filter(ndi.uniform_filter(bone, width), width)
    brain = f[CSF] + f[GM] + f[WM] + f[TUMOUR] + f[NECROSIS] + f[OEDEMA]
    img += np.float32(protocol["beam_hardening_hu"]) * near_bone * brain
    img = ndi.gaussian_filter(img, protocol["psf_px"])
    noise = _correlated_noise(rng, img.shape, protocol["nps_peak"]) * protocol["noise_hu"]
    img += (noise * (1.0 - f[0])).astype(np.float32)  # air outside the head stays clean
    return np.clip(np.rint(img), -1024, 3071).astype(np.int16)
