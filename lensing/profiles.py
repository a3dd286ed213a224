"""Lens profiles in float64 numpy, one class per profile with one interface (`convergence(x, y)`).

Coordinates are physical kpc on the lens plane, relative to the map centre. Each profile holds its
own dimensionless normalisation kappa_s and scale radius r_s, so hosts (built from HaloParameters)
and subhalos (built from their own kappa_s) share the same classes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from .grid import elliptical_radius, q_from_ellipticity
from .halo import ELLIPTICITY_RANGE, HaloParameters, check_finite_positive, check_in_range
from .nfw_math import (
    cored_nfw_projected,
    nfw_enclosed,
    nfw_projected,
    truncated_nfw_projected,
)


class Profile(ABC):
    """A projected mass distribution that yields the convergence at arbitrary positions."""

    @abstractmethod
    def convergence(self, x, y) -> np.ndarray:
        """Dimensionless surface density kappa at (x, y) in kpc."""


@dataclass(frozen=True)
class NFW(Profile):
    """Spherical NFW: kappa(R) = 2 kappa_s F(R / r_s)."""

    kappa_s: float
    r_s: float
    center_x: float = 0.0
    center_y: float = 0.0

    def __post_init__(self) -> None:
        check_finite_positive("kappa_s", self.kappa_s)
        check_finite_positive("scale_radius", self.r_s)

    @classmethod
    def from_halo(cls, halo: HaloParameters, center_x: float = 0.0, center_y: float = 0.0) -> "NFW":
        return cls(halo.kappa_s, halo.r_s, center_x, center_y)

    def _radius(self, x, y) -> np.ndarray:
        return np.hypot(np.asarray(x, np.float64) - self.center_x, np.asarray(y, np.float64) - self.center_y)

    def convergence(self, x, y) -> np.ndarray:
        return 2.0 * self.kappa_s * nfw_projected(self._radius(x, y) / self.r_s)

    def mass_2d(self, radius, sigma_crit: float) -> np.ndarray:
        """Projected mass (Msun) inside radius R (kpc): 4 pi rho_s r_s^3 h(R / r_s)."""
        radius = np.asarray(radius, np.float64)
        return 4.0 * math.pi * self.kappa_s * sigma_crit * self.r_s**2 * nfw_enclosed(radius / self.r_s)

    def deflection(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Reduced deflection (alpha_x, alpha_y) in kpc on the lens plane.

        alpha(R) = M_2D(<R) / (pi Sigma_cr R), pointing to the centre's far side along the radius;
        divide by LensGeometry.kpc_per_arcsec for arcsec.
        """
        dx = np.asarray(x, np.float64) - self.center_x
        dy = np.asarray(y, np.float64) - self.center_y
        radius = np.maximum(np.hypot(dx, dy), 1e-12 * self.r_s)
        magnitude = 4.0 * self.kappa_s * self.r_s**2 * nfw_enclosed(radius / self.r_s) / radius
        return magnitude * dx / radius, magnitude * dy / radius


@dataclass(frozen=True)
class EllipticalNFW(Profile):
    """NFW convergence evaluated at the elliptical radius xi (DESIGN.md section 3)."""

    kappa_s: float
    r_s: float
    ellipticity: float
    position_angle_deg: float = 0.0

    def __post_init__(self) -> None:
        check_finite_positive("kappa_s", self.kappa_s)
        check_finite_positive("scale_radius", self.r_s)
        check_in_range("ellipticity", self.ellipticity, (0.0, 0.99))
        check_in_range("position_angle", self.position_angle_deg, (-360.0, 360.0))

    @classmethod
    def from_halo(cls, halo: HaloParameters, ellipticity: float, position_angle_deg: float = 0.0) -> "EllipticalNFW":
        check_in_range("ellipticity", ellipticity, ELLIPTICITY_RANGE)
        return cls(halo.kappa_s, halo.r_s, ellipticity, position_angle_deg)

    @property
    def q(self) -> float:
        return q_from_ellipticity(self.ellipticity)

    def elliptical_radius(self, x, y) -> np.ndarray:
        phi = math.radians(self.position_angle_deg)
        return elliptical_radius(np.asarray(x, np.float64), np.asarray(y, np.float64), self.q, phi)

    def convergence(self, x, y) -> np.ndarray:
        return 2.0 * self.kappa_s * nfw_projected(self.elliptical_radius(x, y) / self.r_s)


@dataclass(frozen=True)
class CoredNFW(Profile):
    """Cored NFW rho = rho_s / ((r + r_c)/r_s (1 + r/r_s)^2), r_c = core_fraction * r_s (SIDM hosts).

    Optionally elliptical in the same way as EllipticalNFW. rho_s and r_s are those of the NFW host.
    """

    kappa_s: float
    r_s: float
    core_fraction: float
    ellipticity: float = 0.0
    position_angle_deg: float = 0.0

    def __post_init__(self) -> None:
        check_finite_positive("kappa_s", self.kappa_s)
        check_finite_positive("scale_radius", self.r_s)
        check_in_range("core_fraction", self.core_fraction, (1e-4, 0.9))
        check_in_range("ellipticity", self.ellipticity, (0.0, 0.99))

    @classmethod
    def from_halo(
        cls, halo: HaloParameters, core_fraction: float, ellipticity: float = 0.0, position_angle_deg: float = 0.0
    ) -> "CoredNFW":
        return cls(halo.kappa_s, halo.r_s, core_fraction, ellipticity, position_angle_deg)

    def convergence(self, x, y) -> np.ndarray:
        q = q_from_ellipticity(self.ellipticity)
        xi = elliptical_radius(np.asarray(x, np.float64), np.asarray(y, np.float64), q, math.radians(self.position_angle_deg))
        return 2.0 * self.kappa_s * cored_nfw_projected(xi / self.r_s, self.core_fraction)


@dataclass(frozen=True)
class TruncatedNFW(Profile):
    """Spherical truncated NFW (Baltz, Marshall & Oguri 2009) with truncation radius tau * r_s (subhalos)."""

    kappa_s: float
    r_s: float
    tau: float
    center_x: float = 0.0
    center_y: float = 0.0

    def __post_init__(self) -> None:
        check_finite_positive("kappa_s", self.kappa_s)
        check_finite_positive("scale_radius", self.r_s)
        check_finite_positive("tau", self.tau)

    def convergence(self, x, y) -> np.ndarray:
        radius = np.hypot(np.asarray(x, np.float64) - self.center_x, np.asarray(y, np.float64) - self.center_y)
        return 2.0 * self.kappa_s * truncated_nfw_projected(radius / self.r_s, self.tau)


PROFILE_TYPES = ("NFW", "Elliptical NFW")


def host_profile(
    profile_type: str,
    halo: HaloParameters,
    ellipticity: float = 0.0,
    position_angle_deg: float = 0.0,
    core_fraction: float | None = None,
) -> Profile:
    """The host profile for a request: NFW, elliptical NFW, or a cored (SIDM) version of either."""
    if profile_type not in PROFILE_TYPES:
        raise ValueError(f"profile_type must be one of {PROFILE_TYPES}, got {profile_type!r}")
    if profile_type == "NFW" and ellipticity != 0.0:
        raise ValueError("ellipticity must be 0 for profile_type 'NFW'; use 'Elliptical NFW'")
    check_in_range("ellipticity", ellipticity, ELLIPTICITY_RANGE)
    if core_fraction is not None:
        return CoredNFW.from_halo(halo, core_fraction, ellipticity, position_angle_deg)
    if profile_type == "NFW":
        return NFW.from_halo(halo)
    return EllipticalNFW.from_halo(halo, ellipticity, position_angle_deg)
