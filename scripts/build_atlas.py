"""Rebuild mrict's shipped tissue atlas from the Colin27 T1 head (``ch2.nii.gz``, ``ch2bet.nii.gz``).

The two files come from Debian's ``mricron-data`` package (BSD-3-Clause, Chris Rorden)::

    apt-get download mricron-data && dpkg-deb -x mricron-data_*.deb /tmp/mricron
    pip install scikit-learn
    python scripts/build_atlas.py /tmp/mricron/usr/share/mricron/templates \
        src/mrict/phantom/assets/colin27_labels.npz

Labels (uint8): 0 air, 1 scalp/muscle, 2 fat, 3 outer table, 4 diploe, 5 inner table, 6 CSF,
7 grey matter, 8 white matter. CSF/GM/WM come from a three-class Gaussian mixture on the
brain-extracted T1; the extra-cerebral tissues from the head mask, distances to the brain
and to the outside, and a Gaussian mixture on the non-brain T1 intensities (bone dark, fat
and marrow bright). Only the supratentorial axial slab that the simulator samples is kept.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from sklearn.mixture import GaussianMixture

# Axial slab kept (voxel indices of the 1 mm Colin27 grid, z = index - 72 mm in MNI space):
# from just above the skull base / lateral ventricles' floor to the high convexity.
Z_RANGE = (66, 136)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = ndi.sum(mask, lab, range(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def _gmm_classes(values: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fit a k-class GMM; return (labels ordered by mean intensity, sorted means)."""
    gmm = GaussianMixture(k, random_state=seed, n_init=2).fit(values[:, None])
    order = np.argsort(gmm.means_[:, 0])
    rank = np.empty(k, int)
    rank[order] = np.arange(k)
    return rank[gmm.predict(values[:, None])], gmm.means_[order, 0]


def build(templates: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    t1_img = nib.as_closest_canonical(nib.load(templates / "ch2.nii.gz"))
    bet_img = nib.as_closest_canonical(nib.load(templates / "ch2bet.nii.gz"))
    t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
    brain = np.asarray(bet_img.dataobj) > 0
    brain = ndi.binary_fill_holes(_largest_component(brain))

    # head: everything brighter than the background noise, filled slice by slice
    head = t1 > 12
    head = ndi.binary_closing(head, iterations=2)
    head = _largest_component(head)
    for z in range(head.shape[2]):
        head[:, :, z] = ndi.binary_fill_holes(head[:, :, z])
    head |= brain

    labels = np.zeros(t1.shape, np.uint8)
    # brain tissue classes from a Gaussian mixture on the brain-extracted T1
    brain_cls, means = _gmm_classes(t1[brain], 3)
    labels[brain] = np.array([6, 7, 8], np.uint8)[brain_cls]  # CSF < GM < WM on T1
    print(f"brain GMM means (T1 units): CSF {means[0]:.1f}, GM {means[1]:.1f}, WM {means[2]:.1f}")

    outside = head & ~brain
    d_brain = ndi.distance_transform_edt(~brain)
    d_air = ndi.distance_transform_edt(head)
    cls, omeans = _gmm_classes(t1[outside], 3)
    print(f"extra-cerebral GMM means: dark {omeans[0]:.1f}, mid {omeans[1]:.1f}, bright {omeans[2]:.1f}")
    tone = np.zeros(t1.shape, np.int8) - 1
    tone[outside] = cls  # 0 dark (bone, CSF), 1 intermediate (muscle, skin), 2 bright (fat, marrow)

    # the skull: dark voxels of the shell between brain and skin, closed to take in the
    # marrow (diploe) they enclose
    shell = outside & (d_brain <= 14) & (d_air > 2.5)
    dark = shell & (tone == 0) & (d_brain > 1.5)
    bone = ndi.binary_closing(dark, structure=np.ones((3, 3, 3)), iterations=2) & shell
    bone = ndi.binary_opening(bone, iterations=1)
    # soft tissue is what lies outside the bone, connected to the air around the head
    # (per axial slice); non-bone tissue enclosed by the skull is extra-cerebral CSF
    rest = outside & ~bone
    soft = np.zeros_like(rest)
    for z in range(rest.shape[2]):
        lab, n = ndi.label(rest[:, :, z])
        touching = np.unique(lab[(d_air[:, :, z] <= 1.5) & (lab > 0)])
        soft[:, :, z] = np.isin(lab, touching[touching > 0])
    csf = rest & ~soft
    # the three skull layers by relative depth across the bone: inner table next to the
    # brain, diploe (marrow) in the middle, outer table next to the scalp; marrow that the
    # T1 shows bright inside the bone is diploe whatever its depth
    d_soft = ndi.distance_transform_edt(~soft)
    d_in = ndi.distance_transform_edt(~(brain | csf))
    depth = d_in / np.maximum(d_in + d_soft, 1e-6)
    diploe = bone & ((tone == 2) | ((depth > 0.3) & (depth < 0.65)))
    inner = bone & ~diploe & (depth <= 0.3)
    outer = bone & ~diploe & ~inner
    labels[csf] = 6
    labels[soft & (tone == 2)] = 2
    labels[soft & (tone != 2)] = 1
    labels[outer] = 3
    labels[diploe] = 4
    labels[inner] = 5
    zooms = tuple(float(z) for z in t1_img.header.get_zooms()[:3])
    z0, z1 = Z_RANGE
    return labels[:, :, z0:z1], zooms


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    templates, out = Path(argv[0]), Path(argv[1])
    labels, zooms = build(templates)
    counts = np.bincount(labels.ravel(), minlength=9)
    names = ["air", "scalp", "fat", "outer", "diploe", "inner", "CSF", "GM", "WM"]
    print("voxels per label:", dict(zip(names, counts.tolist(), strict=True)))
    np.savez_compressed(out, labels=labels, zooms=np.array(zooms, np.float32))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB), shape {labels.shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
