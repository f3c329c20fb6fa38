"""Render label images into MRI (signal equations) and CT (Hounsfield units).

MRI: spin-echo ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)`` for T1- and T2-weighted images,
inversion recovery ``S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)`` for FLAIR (TI
chosen to null CSF), then partial-volume blur, a smooth multiplicative bias field and Rician
noise. CT: per-tissue HU, scanner blur (Gaussian PSF) and correlated noise with a
filtered-back-projection-like noise power spectrum ``NPS(f) ~ f exp(-(f/f0)^2)``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from scipy import ndimage as ndi

from mrict.phantom.atlas import CSF, N_LABELS, TUMOUR, WM
from mrict.phantom.tissues import sample_ct_tissues, sample_mr_tissues

MRContrast = Literal["t1c", "t1", "t2", "flair"]
MR_CONTRASTS = ("t1c", "t1", "t2", "flair")
#: gadolinium relaxivity r1 (1/(mM s)) at 1.5 T and the concentration reached in enhancing
#: (blood-brain-barrier-disrupted) tumour, mM; Rohrer et al., Invest Radiol 2005;40:715
GD_R1 = 4.3
GD_TUMOUR_MM = (0.3, 0.6)


def sample_mr_protocol(rng: np.random.Generator, contrast: MRContrast, size: int) -> dict[str, Any]:
    """Acquisition settings for one patient, varied within clinical ranges (ms)."""
    tissues = sample_mr_tissues(rng)
    if contrast == "t1c":
        # post-contrast T1: gadolinium shortens T1 of the solid tumour (1/T1 += r1 C)
        conc = rng.uniform(*GD_TUMOUR_MM)
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
    field = ndi.zoom(coarse, size / coarse.shape[0], order=3, mode="nearest")[:size, :size]
    return 1.0 + protocol["bias_amplitude"] * field


def render_mri(
    labels: np.ndarray,
    protocol: dict[str, Any],
    rng: np.random.Generator,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """(H, W) labels -> (H, W) float32 MR magnitude image (scanner units, >= 0)."""
    signal = tissue_signal(protocol)
    img = signal[labels].astype(np.float32)
    img = ndi.gaussian_filter(img, protocol["blur_px"])
    if bias is None:
        bias = bias_field(protocol, labels.shape[0])
    img *= bias.astype(np.float32)
    sigma = protocol["noise_fraction"] * signal[WM]
    real = img + rng.normal(0, sigma, img.shape).astype(np.float32)
    imag = rng.normal(0, sigma, img.shape).astype(np.float32)
    return (np.sqrt(real * real + imag * imag) * protocol["gain"]).astype(np.float32)


def sample_ct_protocol(
    rng: np.random.Generator, size: int, contrast: bool = True
) -> dict[str, Any]:
    """Per-patient CT tissue values (HU) and scanner settings; ``contrast``: after iodinated
    contrast (the solid tumour enhances), else non-contrast (tumour iso- to hypodense)."""
    return {
        "contrast": bool(contrast),
        "hu": sample_ct_tissues(rng, contrast).tolist(),
        "noise_hu": rng.uniform(4.0, 10.0),
        "psf_px": rng.uniform(0.5, 0.9) * size / 256,
        "nps_peak": rng.uniform(0.15, 0.3),  # cycles/pixel of the noise power peak
    }


def _correlated_noise(rng: np.random.Generator, shape: tuple[int, int], peak: float) -> np.ndarray:
    """Unit-variance noise whose power spectrum rises like a ramp and rolls off (FBP-like)."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    f = np.hypot(fy, fx)
    nps = f * np.exp(-((f / peak) ** 2))
    white = rng.standard_normal(shape)
    noise = np.fft.irfft2(np.fft.rfft2(white) * np.sqrt(nps), s=shape)
    return noise / max(noise.std(), 1e-12)


def render_ct(labels: np.ndarray, protocol: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """(H, W) labels -> (H, W) int16 CT image in HU."""
    hu = np.asarray(protocol["hu"], dtype=np.float32)
    assert hu.shape == (N_LABELS,)
    img = hu[labels]
    img = ndi.gaussian_filter(img, protocol["psf_px"])
    noise = _correlated_noise(rng, labels.shape, protocol["nps_peak"]) * protocol["noise_hu"]
    img = img + (noise * (labels > 0)).astype(np.float32)  # air outside the head stays clean
    return np.clip(np.rint(img), -1024, 3071).astype(np.int16)
