"""Lens geometry: distances, critical densities and angle conversions, all from astropy.

Every physical quantity in the project is expressed in Msun and physical kpc. A `LensGeometry`
is cheap to build and cached per (z_lens, z_source, H0, Om0), so callers can ask for one freely.
astropy's cosmology is imported on the first geometry, not with this module: it takes about a second,
and a process that only validates inputs (the sweep driver, the CLI) never needs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from .grid import DEFAULT_FOV_KPC, check_fov
from .limits import H0 as H0_RANGE
from .limits import OM0 as OM0_RANGE
from .limits import check_redshifts

DEFAULT_Z_LENS = 0.5
DEFAULT_Z_SOURCE = 2.0
DEFAULT_H0 = 70.0
DEFAULT_OM0 = 0.3


@dataclass(frozen=True)
class LensGeometry:
    """Distances and densities of one lens/source configuration (docs/design.md section 3).

    Attributes are plain floats in Msun and physical kpc so that numpy and torch code can use them
    without unit bookkeeping; `astropy.units` is used only while computing them.
    """

    z_lens: float
    z_source: float
    H0: float
    Om0: float
    D_l_kpc: float
    D_s_kpc: float
    D_ls_kpc: float
    sigma_crit: float  # Msun / kpc^2
    rho_crit: float  # Msun / kpc^3, critical density at z_lens
    kpc_per_arcsec: float

    def kpc_to_arcsec(self, length_kpc):
        """Convert a physical length on the lens plane to an angle in arcsec."""
        return length_kpc / self.kpc_per_arcsec


@lru_cache(maxsize=256)
def lens_geometry(
    z_lens: float = DEFAULT_Z_LENS,
    z_source: float = DEFAULT_Z_SOURCE,
    H0: float = DEFAULT_H0,
    Om0: float = DEFAULT_OM0,
) -> LensGeometry:
    """Return the (cached) geometry for a flat LambdaCDM cosmology.

    Sigma_cr = c^2 D_s / (4 pi G D_l D_ls); rho_crit is evaluated at z_lens.
    """
    import astropy.units as u
    from astropy.constants import G, c
    from astropy.cosmology import FlatLambdaCDM

    z_lens, z_source = check_redshifts(z_lens, z_source)
    H0, Om0 = H0_RANGE.check("H0", H0), OM0_RANGE.check("Om0", Om0)
    cosmo = FlatLambdaCDM(H0=H0, Om0=Om0)
    d_l = cosmo.angular_diameter_distance(z_lens)
    d_s = cosmo.angular_diameter_distance(z_source)
    d_ls = cosmo.angular_diameter_distance(z_lens, z_source)
    sigma_crit = (c**2 * d_s / (4 * math.pi * G * d_l * d_ls)).to(u.Msun / u.kpc**2)
    rho_crit = cosmo.critical_density(z_lens).to(u.Msun / u.kpc**3)
    kpc_per_arcsec = (d_l * (1 * u.arcsec).to(u.rad).value).to(u.kpc)
    return LensGeometry(
        z_lens=z_lens,
        z_source=z_source,
        H0=float(H0),
        Om0=float(Om0),
        D_l_kpc=float(d_l.to_value(u.kpc)),
        D_s_kpc=float(d_s.to_value(u.kpc)),
        D_ls_kpc=float(d_ls.to_value(u.kpc)),
        sigma_crit=float(sigma_crit.value),
        rho_crit=float(rho_crit.value),
        kpc_per_arcsec=float(kpc_per_arcsec.value),
    )


@dataclass(frozen=True)
class MapGeometry:
    """Geometry of a map given to the model: field of view (physical kpc) and redshifts (validated)."""

    fov_kpc: float = DEFAULT_FOV_KPC
    z_lens: float = DEFAULT_Z_LENS
    z_source: float = DEFAULT_Z_SOURCE

    def __post_init__(self) -> None:
        check_fov(self.fov_kpc)
        lens_geometry(self.z_lens, self.z_source)

    @property
    def lens(self) -> LensGeometry:
        return lens_geometry(self.z_lens, self.z_source)
