"""Tissue properties from the literature and their per-patient variation.

MR relaxation at 1.5 T (T1, T2 in ms; PD relative to CSF = 1). Sources: Wansapura et al.,
J Magn Reson Imaging 1999;9:531 (GM/WM T1, T2); Stanisz et al., Magn Reson Med 2005;54:507
(WM, GM, muscle, 1.5 T); Gold et al., AJR 2004;183:343 (fat, marrow, muscle); Rooney et al.,
Magn Reson Med 2007;57:308 (CSF T1 ~4 s); Bottomley et al., Med Phys 1984;11:425 (tissue
ranges); tumour, necrosis and oedema from reported glioma relaxometry (e.g. Just & Thelen,
Radiology 1988;169:779: T1 0.9-1.5 s, T2 100-200 ms; oedema T2 longer; necrosis near fluid).
Cortical bone has very short T2* and little signal: modelled with PD 0.05, T2 1 ms.

CT in Hounsfield units, adult head: air -1000; fat -100 to -80; CSF 0-15; white matter 27-32;
grey matter 35-41; scalp/muscle 40-60; compact bone (skull tables) 1500-1900 HU; diploe
(cancellous bone with marrow) 400-800 HU (Schneider et al., Phys Med Biol 2000;45:459;
Hounsfield unit tables in standard CT texts); tumour iso- to slightly hypodense to grey
matter (25-38 HU), oedema hypodense (12-22 HU), necrosis near water (5-15 HU). The grey/white
difference is small: 5.5 HU computed from tissue composition (J Comput Assist Tomogr
1980;4:489) and 7-9 HU measured, with brain noise of 4.0-4.2 HU s.d., in 50 patients at
100-120 kV (Nakamura et al., Adv Comput Tomogr 2019;8:29); here 3-14 HU (mean 8.5) and noise
3-5.5 HU at 5 mm, scaled as ``1/sqrt(thickness)``.
"""

from __future__ import annotations

import numpy as np

from mrict.phantom.atlas import N_LABELS, NECROSIS, OEDEMA, TUMOUR

#              air   scalp  fat   outer  diploe inner  CSF   GM    WM    tum   necr  oed
T1_MS = np.array([1.0, 870, 270, 500, 360, 500, 4000, 1100, 700, 1300, 2500, 1250], float)
T2_MS = np.array([1.0, 45, 85, 1.0, 60, 1.0, 2000, 95, 75, 140, 600, 200], float)
PD = np.array([0.0, 0.70, 0.95, 0.05, 0.65, 0.05, 1.00, 0.82, 0.70, 0.88, 0.97, 0.93], float)

# CT: (low, high) Hounsfield units per label, sampled per patient
HU_RANGES = np.array(
    [
        (-1000, -1000),  # air
        (40, 55),  # scalp / muscle
        (-100, -80),  # fat
        (1500, 1900),  # outer table
        (400, 800),  # diploe
        (1500, 1900),  # inner table
        (4, 12),  # CSF
        (35, 41),  # grey matter
        (27, 32),  # white matter
        (26, 36),  # tumour (iso- to slightly hypodense)
        (6, 14),  # necrosis (near water)
        (12, 20),  # oedema (hypodense)
    ],
    float,
)
#: within-tissue texture beyond noise, per label: (fine, coarse) standard deviation of the
#: MR signal relative to the tissue's mean (microstructure, cortical and nuclear variation;
#: higher in lesions, whose cellularity and enhancement are heterogeneous) ...
MR_TEXTURE = np.array(
    [
        (0.0, 0.0),  # air
        (0.05, 0.05),  # scalp / muscle
        (0.04, 0.04),  # fat
        (0.10, 0.05),  # outer table
        (0.08, 0.08),  # diploe
        (0.10, 0.05),  # inner table
        (0.03, 0.03),  # CSF
        (0.03, 0.035),  # grey matter
        (0.025, 0.03),  # white matter
        (0.08, 0.08),  # tumour
        (0.06, 0.05),  # necrosis
        (0.05, 0.05),  # oedema
    ],
    float,
)
#: ... and of CT in HU (bone's trabecular structure dominates; soft tissue varies by 1-2 HU
#: beyond quantum noise)
CT_TEXTURE_HU = np.array(
    [
        (0.0, 0.0),
        (3.0, 3.0),
        (4.0, 4.0),
        (60.0, 80.0),
        (80.0, 100.0),
        (60.0, 80.0),
        (1.0, 1.0),
        (1.5, 1.5),
        (1.5, 1.5),
        (3.0, 4.0),
        (2.0, 2.0),
        (2.0, 2.0),
    ],
    float,
)
#: lesion tissues vary more between patients than normal tissue (relative, uniform +-)
LESION_VARIATION = 0.15
NORMAL_VARIATION = 0.06
#: solid tumour after iodinated contrast (blood-brain-barrier breakdown): enhancing
#: gliomas and metastases reach about 60-100 HU on contrast-enhanced head CT, while normal
#: brain enhances by only a few HU
HU_TUMOUR_ENHANCED = (60.0, 95.0)
assert T1_MS.shape == T2_MS.shape == PD.shape == (N_LABELS,) and HU_RANGES.shape == (N_LABELS, 2)
assert MR_TEXTURE.shape == CT_TEXTURE_HU.shape == (N_LABELS, 2)


def sample_mr_tissues(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-patient T1, T2, PD: literature values with +-6 % biological variation (+-15 %
    for tumour, necrosis and oedema)."""
    width = np.full(N_LABELS, NORMAL_VARIATION)
    width[[TUMOUR, NECROSIS, OEDEMA]] = LESION_VARIATION

    def jitter() -> np.ndarray:
        return 1.0 + width * rng.uniform(-1.0, 1.0, N_LABELS)

    return {"T1": T1_MS * jitter(), "T2": T2_MS * jitter(), "PD": np.clip(PD * jitter(), 0, 1)}


def sample_ct_tissues(rng: np.random.Generator, contrast: bool = False) -> np.ndarray:
    """Per-patient mean HU per label, uniform in the literature range; with ``contrast``
    (and an enhancing lesion) the solid tumour enhances (:data:`HU_TUMOUR_ENHANCED`)."""
    hu = rng.uniform(HU_RANGES[:, 0], HU_RANGES[:, 1])
    enhanced = rng.uniform(*HU_TUMOUR_ENHANCED)
    if contrast:
        hu[TUMOUR] = enhanced
    return hu
