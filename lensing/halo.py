"""NFW halo parameters: M_200c, scale radius, concentration, rho_s and kappa_s (docs/design.md, "Physics conventions").

`HaloParameters` converts between the physical description a user gives (M_vir = M_200c in Msun and
r_s in physical kpc, or M_vir and c) and the lensing normalisation the profiles need (kappa_s).
`mass_from_lensing` inverts that map, vectorised in numpy or torch, so a network that predicts the
dimensionless kappa_s and r_s / fov gets M_vir and c for any redshifts and field of view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .cosmology import LensGeometry
from .limits import CONCENTRATION, ELLIPTICITY, MASS, SCALE_RADIUS, InputError, check_finite_positive
from .nfw_math import namespace, nfw_mass_function

DELTA_CRIT = 200.0
# Duffy et al. (2008, MNRAS 390, L64), Table 1: M_200c, full sample, NFW fits, 0 < z < 2: c = A (M / M_pivot)^B (1+z)^C
DUFFY_A, DUFFY_B, DUFFY_C, DUFFY_PIVOT = 5.71, -0.084, -0.47, 2e12  # pivot in h^-1 Msun
DUFFY_2008 = "Duffy et al. (2008) M200c-c, full sample"  # fits a FITS string card
SCALE_RADIUS_SOURCES = ("scale_radius", "concentration", DUFFY_2008)  # where a host's r_s came from


def r200_from_mass(mass, rho_crit: float):
    """r_200 (kpc) of a halo of M_200c `mass` (Msun) for critical density `rho_crit` (Msun/kpc^3)."""
    return (3.0 * mass / (4.0 * math.pi * DELTA_CRIT * rho_crit)) ** (1.0 / 3.0)


def characteristic_density(c, rho_crit: float):
    """rho_s = (200/3) rho_crit c^3 / (ln(1+c) - c/(1+c))."""
    return DELTA_CRIT / 3.0 * rho_crit * c**3 / nfw_mass_function(c)


def mass_from_lensing(kappa_s, r_s, geometry: LensGeometry, iterations: int = 12):
    """Invert (kappa_s, r_s [kpc]) to (M_200c [Msun], c), vectorised for numpy arrays or torch tensors.

    rho_s = kappa_s Sigma_cr / r_s fixes c through g(y) = ln((200/3) c^3 / m(c)) - ln(rho_s / rho_crit) = 0,
    y = ln c. Newton's method on y converges from any start: g'(y) = 3 - c^2 / ((1+c)^2 m(c)) lies in
    [1, 3], so g is strictly increasing with a slope that varies by at most 3x; 12 steps from c = 3
    reach float64 precision over c in [1e-3, 1e4] (the MC summaries invert B x T samples per call).
    """
    xp = namespace(kappa_s)
    log_target = xp.log(kappa_s * geometry.sigma_crit / r_s / geometry.rho_crit)
    y = xp.full_like(log_target, math.log(3.0))
    for _ in range(iterations):
        c = xp.exp(y)
        m = nfw_mass_function(c)
        residual = math.log(DELTA_CRIT / 3.0) + 3.0 * y - xp.log(m) - log_target
        slope = 3.0 - c**2 / ((1.0 + c) ** 2 * m)
        y = xp.clip(y - residual / slope, math.log(1e-3), math.log(1e4))
    c = xp.exp(y)
    mass = 4.0 / 3.0 * math.pi * DELTA_CRIT * geometry.rho_crit * (c * r_s) ** 3
    return mass, c


@dataclass(frozen=True)
class HaloParameters:
    """A spherical NFW halo: M_vir (M_200c, Msun) and r_s (physical kpc) in a lens geometry."""

    M_vir: float
    r_s: float
    geometry: LensGeometry

    def __post_init__(self) -> None:
        check_finite_positive("M_vir", self.M_vir)
        check_finite_positive("scale_radius", self.r_s)

    @classmethod
    def from_mass_concentration(cls, M_vir: float, c: float, geometry: LensGeometry) -> HaloParameters:
        """Build from M_200c and concentration c = r_200 / r_s."""
        check_finite_positive("M_vir", M_vir)
        check_finite_positive("concentration", c)
        return cls(M_vir=M_vir, r_s=r200_from_mass(M_vir, geometry.rho_crit) / c, geometry=geometry)

    @property
    def r200(self) -> float:
        """Radius (kpc) inside which the mean density is 200 rho_crit(z_lens)."""
        return float(r200_from_mass(self.M_vir, self.geometry.rho_crit))

    @property
    def concentration(self) -> float:
        return self.r200 / self.r_s

    @property
    def rho_s(self) -> float:
        """Characteristic density rho_s (Msun / kpc^3)."""
        return float(characteristic_density(np.float64(self.concentration), self.geometry.rho_crit))

    @property
    def kappa_s(self) -> float:
        """Dimensionless lensing normalisation kappa_s = rho_s r_s / Sigma_cr."""
        return self.rho_s * self.r_s / self.geometry.sigma_crit


def duffy_concentration(mass, z: float, h: float):
    """Duffy et al. (2008) M_200c concentration for the full sample (mass in Msun; h = H0 / 100)."""
    return DUFFY_A * (mass / (DUFFY_PIVOT / h)) ** DUFFY_B * (1.0 + z) ** DUFFY_C


def resolve_scale_radius(M_vir: float, geometry: LensGeometry, scale_radius: float | None = None,
                         concentration: float | None = None) -> tuple[float, str]:
    """(r_s in kpc, where it came from) of a host given by M_200c and at most one of r_s or c = r_200 / r_s;
    with neither, c comes from the Duffy et al. (2008) relation at z_lens. InputError when both are given."""
    MASS.check("M_vir", M_vir)
    if scale_radius is not None and concentration is not None:
        raise InputError("concentration", "give scale_radius or concentration, not both")
    if scale_radius is not None:
        return float(scale_radius), "scale_radius"
    if concentration is not None:
        c, source = CONCENTRATION.check("concentration", concentration), "concentration"
    else:
        c, source = float(duffy_concentration(M_vir, geometry.z_lens, geometry.H0 / 100.0)), DUFFY_2008
    return float(r200_from_mass(M_vir, geometry.rho_crit)) / c, source


def check_host_box(M_vir: float, scale_radius: float, ellipticity: float) -> None:
    """Raise an InputError naming the first host parameter outside the API box."""
    MASS.check("M_vir", M_vir)
    SCALE_RADIUS.check("scale_radius", scale_radius)
    ELLIPTICITY.check("ellipticity", ellipticity)
