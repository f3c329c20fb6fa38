"""Brain lesions as smooth irregular 3-D shapes: a star-shaped main body whose radius varies
smoothly with direction, optional extra lobes, a necrotic core, oedema that spreads along
white matter, and the lesion's mass effect.

Coordinates are physical, in mm: ``z`` along the atlas' axial axis, ``y`` / ``x`` in-plane
relative to the image centre (rows, columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: sphere-equivalent radius of a main lesion body, mm (log-uniform): 8 mm to 5 cm diameter
RADIUS_RANGE_MM = (4.0, 25.0)
#: probability that a lesion has extra lobes, and that a patient has a second lesion
LOBED_PROBABILITY = 0.4
SECOND_LESION_PROBABILITY = 0.15
#: probability that a lesion does not enhance (e.g. low-grade glioma)
NON_ENHANCING_PROBABILITY = 0.1


def _directions(n: int = 256) -> np.ndarray:
    """``n`` unit vectors spread evenly over the sphere (Fibonacci lattice), (n, 3) as
    (z, y, x)."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = np.pi * (1.0 + 5.0**0.5) * i
    r = np.sqrt(1.0 - z * z)
    return np.stack([z, r * np.sin(phi), r * np.cos(phi)], axis=1)


@dataclass(frozen=True)
class Lobe:
    """One star-shaped body: ``radius(u) = radius_mm * exp(sum_k a_k sin(w_k . u + p_k))``
    for unit directions ``u``; ``waves`` (K, 3), ``amplitudes`` / ``phases`` (K,)."""

    centre_mm: tuple[float, float, float]
    radius_mm: float
    waves: np.ndarray
    amplitudes: np.ndarray
    phases: np.ndarray

    @property
    def max_radius_mm(self) -> float:
        return float(self.radius_mm * np.exp(self.amplitudes.sum()))

    def z_range_mm(self) -> tuple[float, float]:
        """Lowest and highest z (mm) of the surface, from its radius along 256 directions."""
        u = _directions()
        phase = u @ self.waves.T + self.phases
        radius = self.radius_mm * np.exp(np.sin(phase) @ self.amplitudes)
        z = self.centre_mm[0] + radius * u[:, 0]
        return float(z.min()), float(z.max())

    def signed_distance(self, z: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm, negative inside) from the surface at slice
        ``z`` and in-plane positions ``yy``, ``xx`` (mm)."""
        dz = z - self.centre_mm[0]
        dy = yy - self.centre_mm[1]
        dx = xx - self.centre_mm[2]
        r = np.sqrt(dz * dz + dy * dy + dx * dx) + 1e-6
        phase = (self.waves[:, 0, None, None] * dz + self.waves[:, 1, None, None] * dy) / r
        phase = phase + self.waves[:, 2, None, None] * dx / r + self.phases[:, None, None]
        log_scale = np.tensordot(self.amplitudes, np.sin(phase), axes=1)
        return r - self.radius_mm * np.exp(log_scale)


def _random_lobe(
    rng: np.random.Generator, centre: np.ndarray, radius: float, roughness: float
) -> Lobe:
    k = 6
    directions = rng.normal(size=(k, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    waves = directions * rng.uniform(1.0, 4.0, (k, 1))
    return Lobe(
        tuple(float(c) for c in centre),
        float(radius),
        waves,
        rng.uniform(0.0, roughness, k),
        rng.uniform(0, 2 * np.pi, k),
    )


@dataclass(frozen=True)
class Lesion:
    """A lesion: the union of its lobes (the first is the main body), a necrotic core
    (``necrotic_fraction`` of the main body's radius; 0: none), oedema reaching
    ``oedema_wm_mm`` into white matter and ``oedema_gm_mm`` into grey matter, a mass effect
    (fractional displacement at the centre) and whether it enhances with contrast."""

    lobes: tuple[Lobe, ...]
    necrotic_fraction: float
    oedema_wm_mm: float
    oedema_gm_mm: float
    mass_effect: float
    enhancing: bool

    @property
    def centre_mm(self) -> tuple[float, float, float]:
        return self.lobes[0].centre_mm

    @property
    def extent_mm(self) -> float:
        """Radius of a sphere around the centre that holds the lesion and its oedema."""
        main = np.asarray(self.centre_mm)
        reach = max(
            float(np.linalg.norm(np.asarray(lobe.centre_mm) - main)) + lobe.max_radius_mm
            for lobe in self.lobes
        )
        return reach + self.oedema_wm_mm + 3.0

    def z_range_mm(self) -> tuple[float, float]:
        """Lowest and highest z (mm) of the lesion body (all lobes, without oedema)."""
        ranges = [lobe.z_range_mm() for lobe in self.lobes]
        return min(r[0] for r in ranges), max(r[1] for r in ranges)

    def signed_distance(self, z: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return np.minimum.reduce([lobe.signed_distance(z, yy, xx) for lobe in self.lobes])

    def core_signed_distance(self, z: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        main = self.lobes[0]
        core = Lobe(
            main.centre_mm,
            main.radius_mm * self.necrotic_fraction,
            main.waves,
            main.amplitudes,
            main.phases,
        )
        return core.signed_distance(z, yy, xx)

    def summary(self) -> dict:
        """JSON-ready parameters for the manifest."""
        main = self.lobes[0]
        return {
            "centre_mm": list(self.centre_mm),
            "radius_mm": main.radius_mm,
            "max_radius_mm": main.max_radius_mm,
            "lobes": len(self.lobes),
            "necrotic_fraction": self.necrotic_fraction,
            "oedema_wm_mm": self.oedema_wm_mm,
            "oedema_gm_mm": self.oedema_gm_mm,
            "mass_effect": self.mass_effect,
            "enhancing": self.enhancing,
        }


def sample_radius(rng: np.random.Generator) -> float:
    """A main lesion radius (mm), log-uniform in :data:`RADIUS_RANGE_MM`."""
    lo, hi = RADIUS_RANGE_MM
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def draw_lesion(rng: np.random.Generator, centre_mm: np.ndarray, radius: float) -> Lesion:
    """A random lesion of main radius ``radius`` (mm) centred at ``centre_mm`` (z, y, x):
    larger lesions are rougher, more often lobed and necrotic, and carry more oedema and
    mass effect."""
    lo, hi = RADIUS_RANGE_MM
    size = float(np.clip((radius - lo) / (hi - lo), 0.0, 1.0))  # 0 small .. 1 large
    lobes = [_random_lobe(rng, centre_mm, radius, roughness=0.08 + 0.14 * size)]
    if rng.random() < LOBED_PROBABILITY * (0.5 + size):
        for _ in range(int(rng.integers(1, 3))):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            offset = direction * radius * rng.uniform(0.5, 0.9)
            lobes.append(
                _random_lobe(rng, centre_mm + offset, radius * rng.uniform(0.35, 0.65), 0.12)
            )
    necrotic = radius > 10.0 and rng.random() < 0.3 + 0.5 * size
    return Lesion(
        lobes=tuple(lobes),
        necrotic_fraction=float(rng.uniform(0.3, 0.6)) if necrotic else 0.0,
        oedema_wm_mm=float(rng.uniform(2.0, 6.0) + 12.0 * size * rng.random()),
        oedema_gm_mm=float(rng.uniform(0.5, 2.5)),
        mass_effect=float(rng.uniform(0.1, 0.25) + 0.3 * size),
        enhancing=bool(rng.random() >= NON_ENHANCING_PROBABILITY),
    )


def edge_fraction(signed_mm: np.ndarray, width_mm: float | np.ndarray) -> np.ndarray:
    """Fraction of a pixel inside a surface at signed distance ``signed_mm``: a linear ramp
    ``width_mm`` wide (the pixel, or more where the slab crosses the surface obliquely),
    float32 in [0, 1]."""
    return np.clip(0.5 - signed_mm / width_mm, 0.0, 1.0).astype(np.float32)
